"""Still frames (veracity.frames): decoding, the reader adapter, the per-participant running call."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from veracity.calibration import Calibrator, Pooling
from veracity.config import ContractConfig, ExtractConfig
from veracity.decision import Thresholds
from veracity.extract import _video_part
from veracity.features import ClipRecord, RecordWriter
from veracity.frames import (
    FRAME_REASONS,
    FrameBatchReport,
    FrameError,
    FrameResult,
    ImageFrame,
    ImageReader,
    ParticipantEvidence,
    VideoScorer,
    WholeImageDetector,
    as_rgb,
    decode_image,
    square_crop,
)

CONTRACT = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()


def _image(w: int = 64, h: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 200  # red: checks RGB (not BGR) order
    img[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    img[..., 2] = rng.integers(0, 60, (h, w), dtype=np.uint8)
    return img


def _encode(rgb: np.ndarray, ext: str, **params: int) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, params.get("quality", 95)] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), flags)
    assert ok
    return buf.tobytes()


# ------------------------------------------------------------------------------ decoding


def test_png_round_trips_exactly_in_rgb_order() -> None:
    img = _image()
    out = decode_image(_encode(img, ".png"))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, img)


def test_jpeg_decodes_to_rgb_close_to_the_source() -> None:
    img = _image()
    out = decode_image(_encode(img, ".jpg"))
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 6
    assert out[..., 0].mean() > 150 and out[..., 2].mean() < 80  # red stays red


def test_format_is_sniffed_from_the_bytes_not_a_name() -> None:
    with pytest.raises(FrameError) as gif:
        decode_image(b"GIF89a" + bytes(64))
    assert gif.value.reason == "not_an_image" and "47 49 46 38" in gif.value.message
    with pytest.raises(FrameError) as text:
        decode_image(b"<html>not an image</html>")
    assert text.value.reason == "not_an_image"
    with pytest.raises(FrameError) as bmp:
        decode_image(_encode(_image(), ".bmp"))  # a real image, but neither JPEG nor PNG
    assert bmp.value.reason == "not_an_image"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"\xff\xd8\xff\xe0" + bytes(200), "undecodable"),
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "undecodable"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "not_an_image"),
])
def test_each_bad_frame_gets_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        decode_image(data)
    assert err.value.reason == reason and err.value.reason in FRAME_REASONS
    assert isinstance(err.value, ValueError) and str(err.value) == err.value.message


def test_a_truncated_jpeg_is_undecodable_or_still_an_image() -> None:
    data = _encode(_image(), ".jpg")
    with pytest.raises(FrameError) as err:
        decode_image(data[:20])  # the header alone: no pixels
    assert err.value.reason == "undecodable"


def test_too_large_is_refused_from_the_header_before_decoding() -> None:
    # A PNG header declaring 100000 x 100000 pixels, and nothing behind it: refused as too large
    # (a decompression bomb is never decoded), not as undecodable.
    ihdr = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    bomb = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + bytes(4)
    with pytest.raises(FrameError) as err:
        decode_image(bomb)
    assert err.value.reason == "too_large" and "100000x100000" in err.value.message
    img = _encode(_image(64, 48), ".jpg")
    with pytest.raises(FrameError) as err:
        decode_image(img, max_pixels=64 * 48 - 1)  # the JPEG's SOF header is read too
    assert err.value.reason == "too_large" and "64x48" in err.value.message
    assert decode_image(img, max_pixels=64 * 48).shape == (48, 64, 3)


def test_too_small_frames_are_refused() -> None:
    for ext in (".png", ".jpg"):
        with pytest.raises(FrameError) as err:
            decode_image(_encode(_image(40, 16), ext))
        assert err.value.reason == "too_small" and "40x16" in err.value.message
    assert decode_image(_encode(_image(40, 16), ".png"), min_side=16).shape == (16, 40, 3)


def test_arrays_are_taken_as_rgb_and_checked() -> None:
    img = _image()
    np.testing.assert_array_equal(as_rgb(img), img)
    gray = img[..., 1].copy()
    assert as_rgb(gray).shape == (48, 64, 3) and (as_rgb(gray)[..., 0] == gray).all()
    np.testing.assert_array_equal(as_rgb(np.dstack([img, np.full((48, 64), 255, np.uint8)])), img)
    for bad in (img.astype(np.float32), np.zeros((4, 48, 64, 3), np.uint8)):
        with pytest.raises(FrameError) as err:
            as_rgb(bad)
        assert err.value.reason == "not_an_image"
    with pytest.raises(FrameError) as err:
        as_rgb(_image(20, 20))
    assert err.value.reason == "too_small"


# ------------------------------------------------------------------------------ the reader adapter


def test_reader_yields_consecutive_samples_and_skips_bad_frames() -> None:
    imgs = [_image(seed=i) for i in range(5)]
    items = [_encode(imgs[0], ".png"), b"nope", imgs[1], b"", _encode(imgs[2], ".png"), imgs[3]]
    reader = ImageReader(items, fps=12.5)
    frames = list(reader)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.08, 0.16, 0.24])
    assert reader.positions == [0, 2, 4, 5] and [f.position for f in frames] == reader.positions
    assert {p: e.reason for p, e in reader.rejected.items()} == {1: "not_an_image", 3: "empty"}
    assert (reader.decoded, reader.sampled, reader.errors) == (4, 4, [])
    assert reader.sizes == {p: (64, 48) for p in (0, 2, 4, 5)}
    np.testing.assert_array_equal(frames[1].rgb(), imgs[1])


def test_image_frame_looks_like_a_sampled_frame() -> None:
    img = _image()
    f = ImageFrame(img, 3, 0.24)
    assert (f.index, f.time, f.width, f.height, f.rotation) == (3, 0.24, 64, 48, 0)
    y = f.y_plane()
    assert y.shape == (48, 64) and y.dtype == np.uint8 and not y.flags.writeable
    np.testing.assert_array_equal(y, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    np.testing.assert_array_equal(f.crop_rgb(10, 5, 30, 25), img[5:25, 10:30])
    out = f.crop_rgb(-4, -2, 6, 8)  # past the top-left corner: edges replicated
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[:2, 4:], img[0:1, 0:6].repeat(2, axis=0))
    np.testing.assert_array_equal(out[2:, :4], img[0:8, 0:1].repeat(4, axis=1))
    assert out.flags.writeable  # a copy the caller may keep
    with pytest.raises(ValueError, match="empty crop box"):
        f.crop_rgb(5, 5, 5, 9)


def _faces(n: int, size: int = 96) -> list[np.ndarray]:
    from veracity.corpus.synth.families import ClipSpec, render
    from veracity.corpus.synth.identity import sample_identity

    ident = sample_identity("p", np.random.default_rng(4))
    clip = render(ClipSpec("p", "real", ident, None, n / 25 + 0.2, 25, size, size, 16000, 20, 2.0, 4))
    return list(clip.frames)[:n]


def test_extraction_video_part_runs_on_the_reader(tmp_path: Path) -> None:
    imgs = _faces(10)
    reader = ImageReader([_encode(i, ".png") for i in imgs], CONTRACT.fps)
    w = RecordWriter(tmp_path / "rec")
    facts = _video_part(reader, w, ExtractConfig(detect_every=1), CONTRACT)
    w.commit({"status": "ok", "tracks": facts["tracks"]})
    rec = ClipRecord(tmp_path / "rec")
    assert facts["n_frames"] == 10 and facts["decoded_frames"] == 10 and facts["decode_errors"] == []
    assert facts["face_ratio"] >= 0.8 and facts["n_tracks"] >= 1
    np.testing.assert_allclose(rec.array("times"), np.arange(10) / CONTRACT.fps)
    rows = rec.track_crops()
    assert len(rows) >= 8 and rec.array("faces").shape[1:] == (32, 32, 3)
    assert set(np.asarray(rec.array("crop_frame"))[rows]) <= set(range(10))
    assert np.asarray(rec.array("crop_detected"))[rows].sum() >= 8


def test_whole_image_detector_with_no_margin_keeps_the_crop_itself(tmp_path: Path) -> None:
    crops = [square_crop(f, 32) for f in _faces(6)]
    reader = ImageReader(crops, CONTRACT.fps)
    w = RecordWriter(tmp_path / "rec")
    c0 = dataclasses.replace(CONTRACT, face_margin=0.0)
    facts = _video_part(reader, w, ExtractConfig(detect_every=1), c0, detector=WholeImageDetector())
    w.commit({"status": "ok", "tracks": facts["tracks"]})
    rec = ClipRecord(tmp_path / "rec")
    assert facts["face_ratio"] == 1.0 and facts["n_tracks"] == 1
    np.testing.assert_array_equal(rec.array("faces"), np.stack(crops))
    np.testing.assert_array_equal(rec.array("crop_box"), np.tile([0, 0, 32, 32], (6, 1)))


def test_square_crop_pads_the_short_side_by_replication() -> None:
    img = _image(64, 48)
    sq = square_crop(img, 64)
    assert sq.shape == (64, 64, 3)
    np.testing.assert_array_equal(sq[8:56], img)  # centred; 8 rows replicated above and below
    np.testing.assert_array_equal(sq[:8], np.repeat(img[:1], 8, axis=0))


# ------------------------------------------------------------------------------ running result

TH = Thresholds(real_below=0.3, fake_at=0.7, target_fpr=0.05, target_uncertain=0.1)
SCORER = VideoScorer(members=(("video", Pooling("mean", 4, 5.0), Calibrator()),), thresholds=TH, bundle_key="b1")


def _report(logits: list[float], verdict: str | None = None, reason: str | None = None,
            scorer: VideoScorer = SCORER, n_frames: int = 27) -> FrameBatchReport:
    z = np.asarray(logits, dtype=np.float64)
    if verdict is None:
        p = float(1 / (1 + np.exp(-z.mean())))
        verdict = TH.verdict(p)
    else:
        p = None
    return FrameBatchReport(verdict=verdict, probability=p, reason=reason, n_frames=n_frames,
                            n_face=n_frames if reason is None else 0,
                            window_logits={"video": z} if reason is None else {}, scorer=scorer)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_running_result_pools_windows_across_batches() -> None:
    clock = Clock()
    ev = ParticipantEvidence(clock=clock)
    first = ev.update("alice", _report([2.0, 2.0, 2.0]))
    assert first["verdict"] == "FAKE" and first["probability"] == pytest.approx(1 / (1 + math.exp(-2.0)))
    clock.t += 5
    second = ev.update("alice", _report([-2.0, -2.0, -2.0]))
    assert second["probability"] == pytest.approx(0.5) and second["verdict"] == "UNCERTAIN"
    assert second["windows"] == 6 and second["members"]["video"]["windows"] == 6
    assert (second["batches"], second["frames"], second["first_seen"], second["last_seen"]) == (2, 54, 1000.0, 1005.0)
    assert second["last_batch"]["verdict"] == "REAL"
    json.dumps(second, allow_nan=False)


def test_running_verdict_does_not_flicker_with_each_batch() -> None:
    # A real person whose batches are noisy: each batch alone swings between REAL, UNCERTAIN
    # and FAKE; the pooled call settles on REAL and stays there.
    ev = ParticipantEvidence(clock=Clock())
    rng = np.random.default_rng(0)
    batch_verdicts, running = [], []
    for _ in range(30):
        r = _report(list(rng.normal(-2.0, 0.3, 3) + rng.normal(0.0, 1.6)))
        batch_verdicts.append(r.verdict)
        running.append(ev.update("bob", r)["verdict"])
    flips = lambda v: sum(a != b for a, b in zip(v, v[1:], strict=False))  # noqa: E731
    assert flips(batch_verdicts) >= 8 and {"REAL", "UNCERTAIN", "FAKE"} <= set(batch_verdicts)
    assert set(running[3:]) == {"REAL"}


def test_abstain_batches_do_not_reset_the_running_call() -> None:
    ev = ParticipantEvidence(clock=Clock())
    ev.update("carol", _report([3.0, 3.0]))
    out = ev.update("carol", _report([], verdict="ABSTAIN", reason="no_face"))
    assert out["verdict"] == "FAKE" and out["windows"] == 2
    assert out["abstained_batches"] == 1 and out["last_batch"] == {"verdict": "ABSTAIN", "probability": None,
                                                                   "reason": "no_face"}
    only_abstain = ParticipantEvidence(clock=Clock()).update("dan", _report([], verdict="ABSTAIN", reason="no_face"))
    assert (only_abstain["verdict"], only_abstain["reason"], only_abstain["probability"]) == ("ABSTAIN", "no_face", None)


def test_entries_expire_after_ttl_without_a_batch() -> None:
    clock = Clock()
    ev = ParticipantEvidence(ttl_s=120, clock=clock)
    ev.update("erin", _report([2.0]))
    ev.update("frank", _report([2.0]))
    clock.t += 100
    ev.update("frank", _report([2.0]))
    clock.t += 30  # erin: 130 s without a batch; frank: 30 s
    assert "erin" not in ev and "frank" in ev and len(ev) == 1
    assert ev.get("erin") is None
    again = ev.update("erin", _report([-2.0]))
    assert again["batches"] == 1 and again["first_seen"] == clock.t and again["windows"] == 1


def test_old_windows_leave_the_pool_and_the_pool_is_bounded() -> None:
    clock = Clock()
    ev = ParticipantEvidence(ttl_s=60, max_windows=5, clock=clock)
    ev.update("gina", _report([3.0, 3.0, 3.0]))
    clock.t += 50
    out = ev.update("gina", _report([-3.0, -3.0, -3.0]))
    assert out["windows"] == 5  # at most max_windows
    clock.t += 20  # the first batch's windows are now 70 s old
    out = ev.update("gina", _report([-3.0]))
    assert out["windows"] == 4 and out["verdict"] == "REAL"


def test_lru_eviction_beyond_max_participants() -> None:
    clock = Clock()
    ev = ParticipantEvidence(max_participants=3, clock=clock)
    for pid in ("a", "b", "c"):
        clock.t += 1
        ev.update(pid, _report([1.0]))
    clock.t += 1
    ev.update("a", _report([1.0]))  # "a" is now the most recent; "b" the least
    ev.update("d", _report([1.0]))
    assert len(ev) == 3 and "b" not in ev and all(p in ev for p in ("a", "c", "d"))


def test_a_new_bundle_starts_the_pool_afresh() -> None:
    ev = ParticipantEvidence(clock=Clock())
    ev.update("hal", _report([3.0, 3.0, 3.0]))
    other = VideoScorer(members=SCORER.members, thresholds=TH, bundle_key="b2")
    out = ev.update("hal", _report([-3.0], scorer=other))
    assert out["windows"] == 1 and out["verdict"] == "REAL" and out["batches"] == 2


def test_without_thresholds_the_running_call_abstains() -> None:
    bare = VideoScorer(members=SCORER.members, thresholds=None, bundle_key="old")
    out = ParticipantEvidence(clock=Clock()).update("ivy", _report([], verdict="ABSTAIN", reason="no_thresholds",
                                                                    scorer=bare))
    assert (out["verdict"], out["reason"], out["probability"]) == ("ABSTAIN", "no_thresholds", None)


def test_updates_from_many_threads_are_all_counted() -> None:
    ev = ParticipantEvidence(max_participants=50, max_windows=1000, clock=Clock())
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                ev.update(f"p{(k * 50 + i) % 20}", _report([0.5, -0.5]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    results = [ev.get(f"p{i}") for i in range(20)]
    assert sum(r["batches"] for r in results) == 400 and sum(r["windows"] for r in results) == 800


# ------------------------------------------------------------------------------ the report


def test_report_to_dict_is_plain_json_without_private_fields() -> None:
    r = FrameBatchReport(verdict="REAL", probability=np.float32(0.1), members={"video": {"logit": math.nan}},
                         frames=[FrameResult(index=0, ok=True, face=True, box=[np.float32(1), 2.0, 3.0, 4.0],
                                             probability=np.float64(0.2))],
                         window_logits={"video": np.zeros(2)}, scorer=SCORER)
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert "window_logits" not in d and "scorer" not in d and d["members"]["video"]["logit"] is None
    assert d["frames"][0] == {"index": 0, "ok": True, "reason": None, "message": "", "width": None, "height": None,
                              "face": True, "detected": False, "box": [1.0, 2.0, 3.0, 4.0], "probability": 0.2,
                              "windows": 0}
    assert json.loads(text)["version"] == 1
