"""Extraction end to end: good clips, every kind of bad input, resume, shards, the DAG bound."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
import pytest

from veracity.config import ContractConfig, ExtractConfig
from veracity.corpus import manifest as mf
from veracity.corpus.synth import speech
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.extract import extract, merge
from veracity.features import ClipRecord, record_dir
from veracity.media.decode import SHRINK_FIRST

pytestmark = pytest.mark.integration

CONTRACT = ContractConfig(fps=12.5, face_size=48).build()
CFG = ExtractConfig(workers=2)
# 50 frames at irregular 30-80 ms steps: a variable-frame-rate clip.
_STEPS = np.where(np.arange(50) % 5 == 0, 80, 30)
VFR_PTS_MS = np.concatenate([[0], np.cumsum(_STEPS)[:-1]])


def _head_frames(seconds: float, w: int = 96, h: int = 96, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    ident = sample_identity(f"p{seed}", rng)
    clip = render(ClipSpec("x", "real", ident, None, seconds, 25, w, h, 16000, 23, 2.0, seed))
    return list(clip.frames), clip.audio


def _write(path: Path, frames: list[np.ndarray] | None, audio: np.ndarray | None, *, fps: int = 25,
           rate: int = 16000, layout: str = "mono", pts_ms: list[int] | None = None,
           codec: str = "libx264", pix_fmt: str = "yuv420p") -> Path:
    """A media file written with PyAV directly, for layouts the corpus writer never makes."""
    with av.open(str(path), "w", format="mp4" if path.suffix == ".mp4" else None) as c:
        vs = None
        if frames:
            vs = c.add_stream(codec, rate=fps)
            vs.height, vs.width = frames[0].shape[:2]
            vs.pix_fmt = pix_fmt
            if pts_ms is not None:
                vs.codec_context.time_base = vs.time_base = __import__("fractions").Fraction(1, 1000)
        as_ = None
        if audio is not None:
            as_ = c.add_stream("aac", rate=rate)
            as_.layout = layout
        if vs is not None:
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                vf.pts = pts_ms[i] if pts_ms is not None else i
                c.mux(vs.encode(vf))
            c.mux(vs.encode(None))
        if as_ is not None:
            data = audio if audio.ndim == 2 else audio[None]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data, dtype=np.float32), format="fltp", layout=layout)
            af.sample_rate, af.pts = rate, 0
            c.mux(as_.encode(af))
            c.mux(as_.encode(None))
    return path


@pytest.fixture(scope="module")
def bad_batch(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Path) -> tuple[Path, dict[str, str]]:
    """A manifest mixing two good corpus clips with every kind of bad or odd input.

    Returns the manifest path and the expected status of each clip.
    """
    d = tmp_path_factory.mktemp("bad")
    good = mf.read(tiny_corpus / "manifest.csv")
    good = good[good.method == "real"].head(2)
    frames, audio = _head_frames(2.0)
    expected: dict[str, str] = {}
    files: dict[str, Path] = {}

    def add(name: str, path: Path, status: str) -> None:
        files[name], expected[name] = path, status

    for row in good.itertuples():
        add(row.video_id, (tiny_corpus / row.path).resolve(), "ok")
    (d / "empty.mp4").write_bytes(b"")
    add("empty", d / "empty.mp4", "empty")
    whole = (tiny_corpus / good.iloc[0].path).read_bytes()
    (d / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    add("truncated", d / "truncated.mp4", "corrupt")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    add("random_bytes", d / "random.mp4", "corrupt")
    (d / "text.mp4").write_text("this is not a video\n" * 100)
    add("text", d / "text.mp4", "corrupt")
    ok, png = cv2.imencode(".png", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    (d / "still.mp4").write_bytes(png.tobytes())
    add("still_image", d / "still.mp4", "unsupported")
    add("audio_only", _write(d / "audio_only.mp4", None, audio), "no_video")
    add("no_audio", _write(d / "no_audio.mp4", frames, None), "no_audio")
    add("silent", _write(d / "silent.mp4", frames, np.zeros_like(audio)), "silent")
    blank = [np.full_like(f, 120) + np.random.default_rng(i).integers(0, 8, f.shape, dtype=np.uint8)
             for i, f in enumerate(frames)]
    add("no_face", _write(d / "no_face.mp4", blank, audio), "no_face")
    left, _ = _head_frames(2.0, seed=1)
    add("two_faces", _write(d / "two_faces.mp4", [np.hstack([a, b]) for a, b in zip(frames, left, strict=True)], audio), "ok")
    add("tiny", _write(d / "tiny.mp4", [cv2.resize(f, (16, 16)) for f in frames], audio), "too_small")
    odd = [cv2.resize(f, (97, 61)) for f in _head_frames(2.0, 160, 100, seed=2)[0]]
    add("odd_dims", _write(d / "odd.mp4", odd, audio, pix_fmt="yuv444p"), "ok")
    add("vfr", _write(d / "vfr.mp4", frames, audio, pts_ms=[int(t) for t in VFR_PTS_MS]), "ok")
    stereo = np.stack([speech.synthesize(speech.plan_utterance(2.0, np.random.default_rng(3)), 2.0,
                                         sample_identity("s", np.random.default_rng(3)), np.random.default_rng(3), 44100)] * 2)
    add("stereo_44k", _write(d / "stereo.mp4", frames, stereo, rate=44100, layout="stereo"), "ok")
    long_frames, long_audio = _head_frames(13.0, 64, 64, seed=4)
    add("very_long", _write(d / "long.mp4", long_frames, long_audio), "too_long")
    add("too_short", _write(d / "short.mp4", frames[:8], audio[:5000]), "too_short")
    add("missing", d / "does_not_exist.mp4", "missing")

    rows = [{"video_id": k, "path": str(p), "label": 0, "split": "test", "method": "real", "identity": k,
             "video_label": 0, "audio_label": 0} for k, p in files.items()]
    path = mf.write(mf.from_records(rows), d / "manifest.csv")
    return path, expected


def test_every_bad_input_gets_its_status_and_good_clips_survive(bad_batch, tmp_path: Path) -> None:
    manifest_path, expected = bad_batch
    cfg = CFG.model_copy(update={"max_duration_s": 10.0})
    result = extract(cfg, CONTRACT, manifest_path, tmp_path / "feat")
    got = dict(zip(result.index.video_id, result.index.status, strict=True))
    assert got == expected
    idx = result.index.set_index("video_id")
    for vid in expected:
        assert isinstance(idx.loc[vid, "message"], str) and idx.loc[vid, "message"], vid
        assert "Traceback" not in idx.loc[vid, "message"]
        assert (record_dir(tmp_path / "feat", vid) / "meta.json").exists()  # nothing lost
    assert idx.loc["two_faces", "n_tracks"] == 2
    assert idx.loc["stereo_44k", "audio_channels"] == 2 and abs(idx.loc["stereo_44k", "audio_s"] - 2.0) < 0.1
    times = ClipRecord(record_dir(tmp_path / "feat", "vfr")).array("times")
    written = set(np.round(VFR_PTS_MS / 1000, 3))
    assert set(np.round(times, 3)) <= written  # true presentation times, not index / fps
    grid = np.floor((times - times[0]) * CONTRACT.fps + 1e-6)
    assert len(np.unique(grid)) == len(times)  # at most one frame per 1/fps slot
    assert abs(len(times) - VFR_PTS_MS[-1] / 1000 * CONTRACT.fps) <= 2  # no drift over the clip
    for vid in (k for k, s in expected.items() if s == "ok"):
        rec = ClipRecord(record_dir(tmp_path / "feat", vid))
        faces = rec.array("faces")
        assert faces.shape[1:] == (48, 48, 3) and faces.dtype == np.uint8
        assert len(rec.array("audio")) > 16000 and rec.array("vad").any()
        assert rec.array("flow").shape[0] == faces.shape[0]
    nf = ClipRecord(record_dir(tmp_path / "feat", "no_face"))
    assert (nf.array("crop_track") == -1).all()  # centre-crop fallback, flagged


def test_synthetic_clips_extract_ok_with_faces(tiny_corpus: Path, tmp_path: Path) -> None:
    result = extract(CFG, CONTRACT, tiny_corpus / "manifest.csv", tmp_path / "feat")
    assert set(result.index.status) == {"ok"}, result.index[result.index.status != "ok"][["video_id", "status", "message"]]
    assert result.summary["face_found_ratio"] >= 0.9
    assert (result.index.n_tracks == 1).all()
    # Loudness normalised to the target for every clip.
    rec = ClipRecord(record_dir(tmp_path / "feat", result.index.video_id[0]))
    rms = 20 * np.log10(np.sqrt(np.mean(np.square(rec.array("audio")))))
    assert abs(rms - CFG.loudness_target_dbfs) < 1.0


def test_shards_and_merge_equal_one_full_run(tiny_corpus: Path, tmp_path: Path) -> None:
    m = tiny_corpus / "manifest.csv"
    full = extract(CFG, CONTRACT, m, tmp_path / "full").index
    extract(CFG, CONTRACT, m, tmp_path / "sharded", shard=(0, 2))
    with pytest.raises(Exception, match="missing shard parts"):
        merge(CFG, tmp_path / "sharded", m, n=2)
    extract(CFG, CONTRACT, m, tmp_path / "sharded", shard=(1, 2))
    merged = merge(CFG, tmp_path / "sharded", m).index
    pd.testing.assert_frame_equal(full, merged)
    for vid in full.video_id:
        a, b = ClipRecord(record_dir(tmp_path / "full", vid)), ClipRecord(record_dir(tmp_path / "sharded", vid))
        for name in ("faces", "times", "audio", "vad", "flow"):
            np.testing.assert_array_equal(a.array(name), b.array(name))


def test_interrupted_run_resumes_without_redoing_finished_clips(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "feat"
    cmd = [sys.executable, "-m", "veracity.cli", "extract", "--manifest", str(tiny_corpus / "manifest.csv"),
           "--out", str(out), "--set", "workers=1", "--set", "contract.face_size=48"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "records").glob("*/*/meta.json"))) < 5:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in (out / "records").glob("*/*/meta.json")}
    assert 5 <= len(done_before) < 42
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done_before)} reused" in rerun.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in (out / "records").glob("*/*/meta.json")}
    assert len(after) == 42
    assert all(after[k] == v for k, v in done_before.items())  # finished records untouched
    assert not list((out / "records").glob("*/*.partial"))


def test_failure_bound_fails_the_stage(bad_batch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from veracity.cli import app

    manifest_path, _ = bad_batch
    res = CliRunner().invoke(app, ["extract", "--manifest", str(manifest_path), "--out", str(tmp_path / "f"),
                                   "--set", "max_duration_s=10", "--set", "contract.face_size=48"])
    assert res.exit_code == 2
    assert "extract.max_failure_ratio" in res.output and "unusable" in res.output
    assert "empty: empty" in res.output  # each bad clip is listed with its status
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["status"]["corrupt"] == 3



def test_audio_is_decoded_beside_the_frames_and_a_failing_video_part_waits_for_it(
        tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veracity import extract as ex

    row = mf.read(tiny_corpus / "manifest.csv").iloc[0].to_dict()
    seq = ex.extract_clip(row, tiny_corpus, tmp_path / "before", CFG, CONTRACT, "fp")
    spans: dict[str, tuple[float, float, str]] = {}
    real_audio, real_video = ex._audio_part, ex._video_part

    def timed(name: str, fn, delay: float = 0.0, fail: bool = False):
        def run(*args, **kwargs):
            t = time.perf_counter()
            time.sleep(delay)
            if fail:
                spans[name] = (t, time.perf_counter(), threading.current_thread().name)
                raise ValueError("simulated bug in the video part")
            out = fn(*args, **kwargs)
            spans[name] = (t, time.perf_counter(), threading.current_thread().name)
            return out
        return run

    monkeypatch.setattr(ex, "_audio_part", timed("audio", real_audio))
    monkeypatch.setattr(ex, "_video_part", timed("video", real_video, delay=0.2))
    res = ex.extract_clip(row, tiny_corpus, tmp_path / "after", CFG, CONTRACT, "fp")
    assert spans["audio"][2] != spans["video"][2]
    assert spans["audio"][0] < spans["video"][1]  # the audio started before the frames ended
    # The same record, facts and order of facts as one after the other.
    assert list(res) == list(seq) and res == {**seq, "reused": False}
    a, b = ClipRecord(record_dir(tmp_path / "before", str(row["video_id"]))), \
        ClipRecord(record_dir(tmp_path / "after", str(row["video_id"])))
    for name in ("faces", "flow", "times", "audio", "vad"):
        np.testing.assert_array_equal(a.array(name), b.array(name))

    # A video part that fails still lets the (slower) audio part finish before the record is
    # written: the clip is "error", and no writer runs on after it.
    spans.clear()
    monkeypatch.setattr(ex, "_audio_part", timed("audio", real_audio, delay=0.3))
    monkeypatch.setattr(ex, "_video_part", timed("video", None, fail=True))
    res = ex.extract_clip(row, tiny_corpus, tmp_path / "failed", CFG, CONTRACT, "fp")
    assert res["status"] == "error" and "simulated bug in the video part" in res["message"]
    assert "audio" in spans  # joined before extract_clip returned
    assert not list((tmp_path / "failed" / "records").glob("*/*.partial"))


def test_faces_are_detected_ahead_of_the_tracker_on_their_own_thread(
        tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veracity import extract as ex
    from veracity.media.faces import HaarFaceDetector

    row = mf.read(tiny_corpus / "manifest.csv").iloc[0].to_dict()
    seen: list[tuple[str, int]] = []
    real = HaarFaceDetector.detect

    def detect(self, gray):
        seen.append((threading.current_thread().name, gray.shape[0]))
        return real(self, gray)

    monkeypatch.setattr(HaarFaceDetector, "detect", detect)
    res = ex.extract_clip(row, tiny_corpus, tmp_path / "feat", CFG, CONTRACT, "fp")
    assert res["status"] == "ok" and res["n_frames"] > 0
    # Every detect_every-th sampled frame, none of them on the thread that tracks and crops.
    assert len(seen) == -(-res["n_frames"] // CFG.detect_every)
    assert {name for name, _ in seen} == {"prefetch"}


def test_in_frames_above_detect_max_side_faces_are_scanned_now_and_then_and_looked_for_near_between(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from veracity import extract as ex
    from veracity.media.faces import HaarFaceDetector, iou

    frames, audio = _head_frames(2.0, 256, 144, seed=5)
    big = [cv2.resize(f, (640, 360), interpolation=cv2.INTER_LINEAR) for f in frames]  # faces ~200 px
    row = {"video_id": "hd", "path": str(_write(tmp_path / "hd.mp4", big, audio))}
    calls: list[tuple[str, str]] = []
    cascades: dict[str, set[int]] = {}
    real_detect, real_near = HaarFaceDetector.detect, HaarFaceDetector.detect_near

    def seen(kind: str, detector: HaarFaceDetector) -> None:
        calls.append((kind, threading.current_thread().name))
        cascades.setdefault(threading.current_thread().name, set()).add(id(detector._classifier()))

    def detect(self, gray):
        seen("whole", self)
        return real_detect(self, gray)

    def detect_near(self, gray, boxes):
        seen("near", self)
        return real_near(self, gray, boxes)

    monkeypatch.setattr(HaarFaceDetector, "detect", detect)
    monkeypatch.setattr(HaarFaceDetector, "detect_near", detect_near)
    res = ex.extract_clip(row, tmp_path, tmp_path / "near", CFG, CONTRACT, "fp")
    assert res["status"] == "ok" and res["n_frames"] == 25 and res["n_tracks"] == 1
    assert res["face_ratio"] == 1.0 and res["detect_ratio"] == 1.0
    # Sampled frames 0 and 16 scanned whole ahead of the tracker; 4, 8, 12, 20, 24 near the face.
    assert calls.count(("whole", "prefetch")) == 2
    assert [c for c in calls if c[0] == "near"] == [("near", threading.current_thread().name)] * 5
    assert len(calls) == 7
    # The two threads detect at once: each has its own cascade (OpenCV's is not thread-safe).
    assert len(cascades) == 2 and not set.intersection(*cascades.values())

    monkeypatch.setattr(HaarFaceDetector, "detect", real_detect)
    whole = ex.extract_clip(row, tmp_path, tmp_path / "whole", CFG.model_copy(update={"scan_every": 4}), CONTRACT, "fp")
    assert whole["n_tracks"] == 1
    near_boxes = ClipRecord(record_dir(tmp_path / "near", "hd")).array("crop_box")
    whole_boxes = ClipRecord(record_dir(tmp_path / "whole", "hd")).array("crop_box")
    assert len(near_boxes) == len(whole_boxes) == 25
    # Crops this large (over SHRINK_FIRST x face_size) have even edges: averaged down in YUV.
    large = near_boxes[:, 2] - near_boxes[:, 0] > SHRINK_FIRST * CONTRACT.face_size
    assert large.any() and not (near_boxes[large] % 2).any()
    # The crops follow the same face: boxes as close as two whole-frame passes a frame apart.
    assert min(iou(tuple(a), tuple(b)) for a, b in zip(near_boxes, whole_boxes, strict=True)) > 0.8


def test_scan_every_must_be_a_multiple_of_detect_every() -> None:
    with pytest.raises(ValueError, match="multiple of detect_every"):
        ExtractConfig(detect_every=4, scan_every=10)
    assert ExtractConfig(detect_every=3, scan_every=3).scan_every == 3


def test_a_bug_is_status_error_logged_and_fails_the_stage(tiny_corpus: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from veracity import extract as ex

    good = mf.read(tiny_corpus / "manifest.csv").head(3).copy()
    good["path"] = [str((tiny_corpus / p).resolve()) for p in good.path]
    manifest_path = mf.write(good, tmp_path / "manifest.csv")
    victim = str(good.video_id.iloc[1])
    real_audio_part = ex._audio_part

    def buggy_audio_part(path, *args):
        if Path(path).name == Path(good.path.iloc[1]).name:
            raise ValueError("simulated bug in our code")
        return real_audio_part(path, *args)

    monkeypatch.setattr(ex, "_audio_part", buggy_audio_part)
    # Bad media may be any share of the clips here: a bug still fails the stage.
    cfg = CFG.model_copy(update={"workers": 1, "max_failure_ratio": 1.0})
    with caplog.at_level("WARNING", logger="veracity.extract"):
        result = extract(cfg, CONTRACT, manifest_path, tmp_path / "feat")
    row = result.index.set_index("video_id").loc[victim]
    assert row.status == "error"  # not "corrupt": the media is fine
    assert "ValueError" in row.message and "simulated bug in our code" in row.message
    saved = pd.read_csv(tmp_path / "feat" / "index.csv").set_index("video_id").loc[victim]
    assert (saved.status, saved.message) == (row.status, row.message)
    logged = [r for r in caplog.records if r.levelname == "WARNING" and r.exc_info and victim in r.getMessage()]
    assert logged and "buggy_audio_part" in caplog.text  # the traceback, not just a line
    assert (result.summary["errors"], result.summary["error_clips"]) == (1, [victim])
    assert result.summary["status"] == {"error": 1, "ok": 2}
    with pytest.raises(ex.ExtractError, match=f"status 'error'.*{victim}"):
        ex.check_failures(result.summary, cfg)
    # Even where error is (wrongly) listed as usable: a code failure is never allowed.
    lenient = cfg.model_copy(update={"usable_statuses": ("ok", "error")})
    with pytest.raises(ex.ExtractError, match=victim):
        ex.check_failures(ex.summarize(result.index, lenient), lenient)

    # Once the bug is fixed, the next run retries the clip (same fingerprint) and reuses the rest.
    monkeypatch.setattr(ex, "_audio_part", real_audio_part)
    again = extract(cfg, CONTRACT, manifest_path, tmp_path / "feat")
    assert (again.reused, again.processed) == (2, 1)
    assert set(again.index.status) == {"ok"} and again.summary["errors"] == 0
    ex.check_failures(again.summary, cfg)
