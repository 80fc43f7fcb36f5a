"""Batches of still frames through the tiny real bundle (Analyzer.check_frames, veracity.frames).

The frames are rendered by the synthetic generator and posted as JPEG or PNG bytes, as the
meeting server posts them. The batch's numbers are recomputed here from the crops by hand
(windows, flow, normalisation, Bundle.window_logits, pooling, calibrator), so a test fails
when the plumbing between the frames and the members changes, not only when it crashes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from veracity.analyzer import Analyzer
from veracity.bundle import Bundle
from veracity.calibration import Calibrator, Pooling
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.decision import Thresholds, fit_thresholds
from veracity.frames import (
    BATCH_REASONS,
    MAX_BATCH_FRAMES,
    FrameBatchReport,
    FrameError,
    ParticipantEvidence,
)
from veracity.media.audio import hop_seconds
from veracity.media.flow import FlowStream
from veracity.models.base import Batch
from veracity.stages.calibrate import member_video_logits_from, read_window_logits

pytestmark = pytest.mark.integration

N = 27


@pytest.fixture(scope="module")
def analyzer(tiny_bundle: Path) -> Analyzer:
    return Analyzer(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    """27 RGB frames (96 x 96) of one synthetic person talking."""
    ident = sample_identity("caller", np.random.default_rng(11))
    clip = render(ClipSpec("caller", "real", ident, None, N / 25 + 0.2, 25, 96, 96, 16000, 20, 2.0, 11))
    return list(clip.frames)[:N]


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90] if ext == ".jpg" else [])
    assert ok
    return buf.tobytes()


def _decoded(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _cut(rgb: np.ndarray, box: list[float], size: int) -> np.ndarray:
    """The crop extraction cuts: the box (edges replicated past the image), INTER_AREA to size."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = rgb.shape[:2]
    region = rgb[np.clip(np.arange(y0, y1), 0, h - 1)[:, None], np.clip(np.arange(x0, x1), 0, w - 1)[None, :]]
    return cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=cv2.INTER_AREA)


def _by_hand(bundle: Bundle, crops: list[np.ndarray], member: str = "video") -> tuple[float, list[float], np.ndarray]:
    """Pooled probability, per-frame probabilities and window logits of one face track's
    crops, computed here from the data contract and the member (not through veracity.frames)."""
    c = bundle.contract
    t, size = c.frames_per_window, c.face_size
    fs = max(8, size // 2)
    stream = FlowStream()
    flows = []
    for crop in crops:
        f = stream.push(cv2.resize(crop, (fs, fs), interpolation=cv2.INTER_AREA))
        flows.append(np.zeros((fs, fs, 2), np.float16) if f is None else f)
    n = len(crops)
    last = max(0, n - t)
    starts = list(range(0, last + 1, t // 2))
    if starts[-1] != last:
        starts.append(last)
    mean, std = torch.tensor(c.mean).view(1, 3, 1, 1), torch.tensor(c.std).view(1, 3, 1, 1)
    video, flow = [], []
    for s in starts:
        v = torch.from_numpy(np.stack(crops[s : s + t])).permute(0, 3, 1, 2).float() / 255.0
        video.append((v - mean) / std)
        flow.append(torch.from_numpy(np.stack(flows[s : s + t]).astype(np.float32)).permute(0, 3, 1, 2))
    b = len(starts)
    nan = torch.full((b,), math.nan)
    batch = Batch(video=torch.stack(video), flow=torch.stack(flow),
                  audio=torch.zeros(b, c.audio_samples_per_window),
                  vad=torch.zeros(b, int(round(c.window_seconds / hop_seconds(c.sample_rate))), dtype=torch.bool),
                  video_present=torch.ones(b, dtype=torch.bool), audio_present=torch.zeros(b, dtype=torch.bool),
                  label=torch.zeros(b), video_label=nan, audio_label=nan.clone())
    z = np.asarray(bundle.window_logits(batch, members=[member])[member], dtype=np.float64)
    m = next(x for x in bundle.members if x.name == member)
    prob = float(m.calibrator.prob(m.pooling.one(z)))
    per_frame = [float(m.calibrator.prob(m.pooling.one(z[[i for i, s in enumerate(starts) if s <= k < s + t]])))
                 for k in range(n)]
    return prob, per_frame, z


def _check_report(r: FrameBatchReport, bundle: Bundle) -> None:
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    th = bundle.modality_thresholds["video"]
    assert r.verdict in {"REAL", "UNCERTAIN", "FAKE"} and r.reason is None
    assert 0.0 <= r.probability <= 1.0 and r.verdict == th.verdict(r.probability)
    assert r.thresholds == {"real_below": th.real_below, "fake_at": th.fake_at}
    assert set(r.members) == {"video"} and set(r.window_logits) == {"video"}  # the audio member never ran
    assert r.members["video"]["probability"] == r.probability and r.windows == len(r.window_logits["video"])
    for f in d["frames"]:
        if f["face"]:
            assert 0.0 <= f["probability"] <= 1.0 and f["windows"] >= 1 and len(f["box"]) == 4
        else:
            assert f["probability"] is None


# ------------------------------------------------------------------------------ batches of frames


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_batch_of_face_frames_is_scored_frame_by_frame(analyzer: Analyzer, faces: list[np.ndarray],
                                                         ext: str) -> None:
    images = [_encode(f, ext) for f in faces]
    r = analyzer.check_frames(images)
    _check_report(r, analyzer.bundle)
    assert len(r.frames) == N and [f.index for f in r.frames] == list(range(N))
    assert all(f.ok and (f.width, f.height) == (96, 96) for f in r.frames)
    assert r.n_face >= 20 and r.n_face == sum(f.face for f in r.frames)
    assert r.bundle["sha256"] == analyzer.identity["sha256"]

    # The same numbers from the same crops, by hand.
    crops = [_cut(_decoded(images[f.index]), f.box, analyzer.contract.face_size) for f in r.frames if f.face]
    prob, per_frame, z = _by_hand(analyzer.bundle, crops)
    np.testing.assert_allclose(r.window_logits["video"], z, rtol=1e-5, atol=1e-5)
    assert r.probability == pytest.approx(prob, abs=1e-6)
    assert [f.probability for f in r.frames if f.face] == pytest.approx(per_frame, abs=1e-6)

    # The first batch of a participant: the running call is this batch's.
    running = ParticipantEvidence().update("caller", r)
    assert running["probability"] == pytest.approx(r.probability) and running["verdict"] == r.verdict
    assert running["windows"] == r.windows and running["face_frames"] == r.n_face


def test_face_crops_are_scored_as_they_are(analyzer: Analyzer, faces: list[np.ndarray]) -> None:
    size = analyzer.contract.face_size
    r = analyzer.check_frames([_encode(f, ".png") for f in faces])
    crops = [_cut(faces[f.index], f.box, size) for f in r.frames if f.face]
    rc = analyzer.check_frames([_encode(c, ".png") for c in crops], cropped=True)
    _check_report(rc, analyzer.bundle)
    assert rc.cropped and rc.n_face == len(crops) and all(f.face and f.detected for f in rc.frames)
    assert all(f.box == [0.0, 0.0, float(size), float(size)] for f in rc.frames)
    prob, per_frame, _ = _by_hand(analyzer.bundle, crops)
    assert rc.probability == pytest.approx(prob, abs=1e-6)
    assert [f.probability for f in rc.frames] == pytest.approx(per_frame, abs=1e-6)
    assert rc.probability == pytest.approx(r.probability, abs=1e-6)  # the crops extraction cut give the same call
    # A bigger, non-square crop is squared (edges replicated) and shrunk like extraction's own crop.
    wide = [np.concatenate([c, c[:, -8:]], axis=1) for c in crops]  # 40 x 32
    rw = analyzer.check_frames(wide, cropped=True)
    assert rw.verdict != "ABSTAIN" and rw.frames[0].box == [0.0, 0.0, 40.0, 32.0]


def test_frames_without_a_face_abstain_and_are_never_real(analyzer: Analyzer) -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96)[None, :, None] * np.ones((96, 1, 3))
    frames = [np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8) for _ in range(N)]
    r = analyzer.check_frames([_encode(f, ".jpg") for f in frames])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "no_face", None)
    assert r.reason in BATCH_REASONS and r.message and r.window_logits == {}
    assert all(f.ok and not f.face and f.probability is None and f.box is None for f in r.frames)
    json.dumps(r.to_dict(), allow_nan=False)
    running = ParticipantEvidence().update("nobody", r)
    assert (running["verdict"], running["reason"], running["probability"]) == ("ABSTAIN", "no_face", None)


def test_garbage_frames_are_flagged_and_the_rest_scored(analyzer: Analyzer, faces: list[np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    garbage = {3: (b"\x00\x01" + rng.bytes(500), "not_an_image"),
               7: (b"\xff\xd8\xff\xe0" + rng.bytes(300), "undecodable"),
               12: (b"\x89PNG\r\n\x1a\n" + rng.bytes(300), "undecodable"),
               18: (b"", "empty"),
               25: (b"GIF89a" + rng.bytes(100), "not_an_image")}
    good = iter(_encode(f, ".jpg") for f in faces)
    images = [garbage[i][0] if i in garbage else next(good) for i in range(N)]
    r = analyzer.check_frames(images)
    _check_report(r, analyzer.bundle)
    assert r.n_frames == N and r.n_decoded == N - len(garbage)
    for i, f in enumerate(r.frames):
        if i in garbage:
            assert (f.ok, f.reason, f.face, f.probability) == (False, garbage[i][1], False, None) and f.message
        else:
            assert f.ok and f.reason is None
    assert sum(f.face for f in r.frames) >= 15 and all(f.probability is not None for f in r.frames if f.face)


def test_too_few_frames_abstain(analyzer: Analyzer, faces: list[np.ndarray]) -> None:
    r = analyzer.check_frames([_encode(f, ".jpg") for f in faces[:3]])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "too_short", None)
    r = analyzer.check_frames([b"junk"] * 4)
    assert (r.verdict, r.reason) == ("ABSTAIN", "corrupt")
    assert all(f.reason == "not_an_image" for f in r.frames)


def test_bad_requests_raise_frame_errors(analyzer: Analyzer, faces: list[np.ndarray]) -> None:
    images = [_encode(f, ".jpg") for f in faces[:10]]
    with pytest.raises(FrameError) as err:
        analyzer.check_frames(images, member="nope")
    assert err.value.reason == "unknown_member" and "'nope'" in str(err.value) and "['video']" in str(err.value)
    with pytest.raises(FrameError) as err:
        analyzer.check_frames(images, member="audio")
    assert err.value.reason == "member_needs_audio" and "needs audio" in str(err.value)
    with pytest.raises(FrameError) as err:
        analyzer.check_frames([])
    assert err.value.reason == "no_frames"
    with pytest.raises(FrameError) as err:
        analyzer.check_frames([b"x"] * (MAX_BATCH_FRAMES + 1))
    assert err.value.reason == "too_many_frames"
    r = analyzer.check_frames(images, member="video")
    assert r.member == "video" and set(r.members) == {"video"}


# ------------------------------------------------------------------------------ video-only thresholds


def test_calibrate_fits_video_only_thresholds_and_the_bundle_carries_them(tiny_bundle: Path) -> None:
    root = tiny_bundle.parent
    cal = json.loads((root / "models" / "calibration" / "calibration.json").read_text())
    assert set(cal["modality_thresholds"]) == {"video", "audio"}
    # Refit by hand from the member's window logits: pooled, calibrated, val clips, video_label.
    spec = cal["members"]["video"]
    v = member_video_logits_from(read_window_logits(root / "models", "video"), Pooling.from_dict(spec["pooling"]))
    p = Calibrator.from_dict(spec["calibrator"]).prob(v["z"].to_numpy())
    val = ((v["split"] == "val") & v["video_label"].notna()).to_numpy()
    want = fit_thresholds(p[val], v["video_label"].to_numpy()[val], cal["thresholds"]["target_fpr"],
                          cal["thresholds"]["target_uncertain"])
    got = Thresholds.from_dict(cal["modality_thresholds"]["video"])
    assert (got.real_below, got.fake_at) == pytest.approx((want.real_below, want.fake_at), abs=1e-9)
    assert got.val["fpr"] == want.val["fpr"] and got.val["n"] == want.val["n"]
    metrics = json.loads((root / "reports" / "calibrate" / "metrics.json").read_text())
    assert metrics["modalities"]["video"]["val"]["fpr"] == want.val["fpr"]
    assert metrics["modalities"]["video"]["members"] == ["video"]
    loaded = Bundle.load(tiny_bundle)
    assert loaded.modality_thresholds == {k: Thresholds.from_dict(d) for k, d in cal["modality_thresholds"].items()}
    assert json.loads((tiny_bundle / "bundle.json").read_text())["modality_thresholds"] == json.loads(
        json.dumps(cal["modality_thresholds"]))


def test_a_bundle_without_video_thresholds_abstains(tiny_bundle: Path, tmp_path: Path,
                                                    faces: list[np.ndarray]) -> None:
    old = tmp_path / "old_bundle"
    shutil.copytree(tiny_bundle, old)
    spec = json.loads((old / "bundle.json").read_text())
    del spec["modality_thresholds"]
    (old / "bundle.json").write_text(json.dumps(spec))  # bundle.json is not in its own checksums
    a = Analyzer(old, device="cpu")
    assert a.bundle.modality_thresholds == {}
    r = a.check_frames([_encode(f, ".jpg") for f in faces])
    assert (r.verdict, r.reason, r.probability) == ("ABSTAIN", "no_thresholds", None)
    assert "predates video-only thresholds" in r.message and r.thresholds == {}
    assert r.n_face >= 20 and all(f.probability is None for f in r.frames)
