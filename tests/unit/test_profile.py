"""The reference profile on synthetic numbers: distances, fact bands, calibration, files."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from veracity.features import META, ClipRecord
from veracity.profile import (
    FACTS,
    PROFILE_JSON,
    PROFILE_NPZ,
    ProfileError,
    ReferenceProfile,
    media_facts,
)

TARGET = 0.02


def _facts(n: int, seed: int) -> np.ndarray:
    """In-distribution media facts, (n, len(FACTS)) in FACTS order."""
    rng = np.random.default_rng(seed)
    cols = {
        "duration_s": rng.uniform(3.0, 4.0, n), "fps": np.full(n, 25.0), "width": np.full(n, 128.0),
        "height": np.full(n, 128.0), "face_px": rng.normal(50, 4, n), "brightness": rng.normal(120, 10, n),
        "sharpness": np.exp(rng.normal(4.0, 0.3, n)), "rms_dbfs": rng.normal(-20, 2, n),
        "speech_ratio": rng.uniform(0.5, 0.9, n), "face_ratio": rng.uniform(0.95, 1.0, n),
    }
    return np.stack([cols[f] for f in FACTS], axis=1)


def _cloud(n: int, mix: np.ndarray, seed: int, shift: np.ndarray | None = None) -> np.ndarray:
    """A correlated Gaussian cloud with very different scales per direction."""
    z = np.random.default_rng(seed).normal(size=(n, mix.shape[0]))
    x = z @ mix
    return x + shift if shift is not None else x


def _mix(d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return np.diag(np.geomspace(5.0, 0.05, d)) @ q  # rows: scaled orthonormal directions


def _profile(d: int, n_fit: int, n_val: int, method: str = "mahalanobis", **kw) -> tuple[ReferenceProfile, np.ndarray]:
    mix = _mix(d)
    emb_fit = {"video": _cloud(n_fit, mix, 1), "audio": _cloud(n_fit, mix[::-1], 2)}
    emb_val = {"video": _cloud(n_val, mix, 3), "audio": _cloud(n_val, mix[::-1], 4)}
    p = ReferenceProfile.fit(_facts(n_fit, 5), emb_fit, _facts(n_val, 6), emb_val, target_rate=TARGET,
                             method=method, modalities={"video": "video", "audio": "audio"}, **kw)
    return p, mix


def _flag_rate(p: ReferenceProfile, facts: np.ndarray, emb: dict[str, np.ndarray]) -> float:
    return float((p.ood_scores(facts, emb) > 1.0).mean())


@pytest.mark.parametrize(("d", "n_fit"), [(32, 400), (64, 40)])
def test_mahalanobis_with_shrinkage_flags_a_shifted_cloud_and_passes_new_in_distribution_clips_at_the_rate(
        d: int, n_fit: int) -> None:
    # (64, 40): fewer fit clips than dimensions, where the sample covariance is singular.
    p, mix = _profile(d, n_fit, 2000)
    assert p.members["video"].shrinkage is not None and 0 < p.members["video"].shrinkage < 1
    n = 5000
    fresh = {"video": _cloud(n, mix, 10), "audio": _cloud(n, mix[::-1], 11)}
    facts = _facts(n, 12)
    rate = _flag_rate(p, facts, fresh)
    assert 0.01 <= rate <= 0.032, rate  # all reasons together, at about the target rate
    assert p.calibration["resolvable"] and p.calibration["threshold_rate"] <= TARGET
    if n_fit > d:
        # 8 standard deviations along a middle direction of the cloud: shorter than the
        # cloud's own spread (a Euclidean distance misses it), far in Mahalanobis terms.
        shift = 8 * mix[d // 2]
        centre = fresh["video"].mean(axis=0)
        eucl98 = np.quantile(np.linalg.norm(fresh["video"] - centre, axis=1), 0.98)
        shifted = {"video": _cloud(n, mix, 13, shift), "audio": fresh["audio"]}
        assert (np.linalg.norm(shifted["video"] - centre, axis=1) > eucl98).mean() < 0.1
    else:  # so few clips only resolve a shift of the whole cloud (2 std in every direction)
        shifted = {"video": _cloud(n, mix, 13, 2 * mix.sum(axis=0)), "audio": fresh["audio"]}
    assert _flag_rate(p, facts, shifted) >= 0.95
    one = dict(zip(FACTS, facts[0], strict=True))
    r = p.score(one, {"video": shifted["video"][0], "audio": fresh["audio"][0]})
    assert r.out and r.ood_score > 1 and r.members["video"].out and not r.members["audio"].out
    assert r.reasons == [f"member video embedding distance {r.members['video'].ratio:.1f}x its threshold"]
    inside = p.score(one, {"video": fresh["video"][1], "audio": fresh["audio"][1]})
    assert not inside.out and inside.reasons == [] and inside.ood_score < 1


def test_knn_flags_a_shifted_cloud_and_passes_new_in_distribution_clips() -> None:
    p, mix = _profile(16, 600, 1500, method="knn", knn_k=5)
    assert p.members["video"].reference is not None and p.members["video"].mean is None
    n = 3000
    fresh = {"video": _cloud(n, mix, 20), "audio": _cloud(n, mix[::-1], 21)}
    assert 0.005 <= _flag_rate(p, _facts(n, 22), fresh) <= 0.04
    # kNN works on directions (L2-normalised): move the cloud away from the origin.
    far = {"video": _cloud(n, mix, 23, shift=30 * np.eye(16)[0]), "audio": fresh["audio"]}
    assert _flag_rate(p, _facts(n, 22), far) >= 0.95


def test_fact_bands_flag_out_of_range_values_with_readable_reasons() -> None:
    p, mix = _profile(8, 300, 300)
    emb = {"video": _cloud(1, mix, 30)[0], "audio": _cloud(1, mix[::-1], 31)[0]}
    base = dict(zip(FACTS, _facts(1, 32)[0], strict=True))
    st = p.facts["face_px"]
    assert st.q_lo == pytest.approx(float(np.quantile(p.fit_facts[:, FACTS.index("face_px")], 0.005)))
    # The stated margin is the least widening; the calibration may widen further, never narrow.
    assert st.margin_hi == pytest.approx(st.q_hi * 1.25) and st.margin_lo == pytest.approx(st.q_lo / 1.25)
    assert st.widen >= 1.0 and st.flag_hi >= st.margin_hi and st.flag_lo <= st.margin_lo
    assert math.log(st.flag_hi / st.median) == pytest.approx(st.widen * math.log(st.margin_hi / st.median))

    big = p.score({**base, "face_px": 310.0}, emb)
    assert big.out and big.facts["face_px"].out and big.ood_score > 1
    assert big.reasons == [f"face size 310 px is above the profile's 99.5% ({st.q_hi:.0f} px; "
                           f"out of profile above {st.flag_hi:.0f} px)"]
    dark = p.score({**base, "brightness": 5.0}, emb)
    assert dark.out and dark.reasons[0].startswith("brightness (mean luma) 5 is below the profile's 0.5% (")
    # At the widened edge the ratio is 1.0 (not out); just past it, out.
    at_edge = p.score({**base, "face_px": st.flag_hi}, emb)
    assert at_edge.facts["face_px"].ratio == pytest.approx(1.0) and not at_edge.out
    assert p.score({**base, "face_px": st.flag_hi * 1.001}, emb).out
    # A fact that does not gate (duration) is reported as a note, not a reason.
    long = p.score({**base, "duration_s": 600.0}, emb)
    assert not long.out and long.reasons == [] and long.notes[0].startswith("duration 600.0 s is above")
    assert long.facts["duration_s"].out and not long.facts["duration_s"].gated
    # A resolution that never varied in training still has a band (multiplicative margin).
    assert p.facts["width"].flag_lo == pytest.approx(128 / 1.25) and p.facts["width"].flag_hi == pytest.approx(160)
    # Unknown facts are skipped, not flagged; so is a member that did not judge the clip.
    partial = p.score({**base, "rms_dbfs": math.nan}, {"video": emb["video"]})
    assert "rms_dbfs" in partial.skipped and "audio" in partial.skipped and "audio" not in partial.members
    assert not partial.out
    both = p.score({**base, "face_px": 310.0}, {"video": emb["video"] + 50 * mix[-1], "audio": emb["audio"]})
    assert both.reasons[0].startswith("face size") and both.reasons[1].startswith("member video")
    assert both.to_dict()["members"]["video"]["out"] is True
    with pytest.raises(ProfileError, match="no member 'lipsync'"):
        p.score(base, {"lipsync": emb["video"]})
    with pytest.raises(ProfileError, match="features"):
        p.score(base, {"video": np.zeros(3)})


def test_held_out_clips_out_on_a_fact_count_against_the_target_rate() -> None:
    mix = _mix(8)
    n = 500
    val_facts = _facts(n, 41)
    val_facts[:6, FACTS.index("face_px")] = 400.0  # 1.2% of held-out clips out on face size alone
    p = ReferenceProfile.fit(_facts(400, 40), {"video": _cloud(400, mix, 42)}, val_facts,
                             {"video": _cloud(n, mix, 43)}, target_rate=TARGET)
    scores = p.ood_scores(val_facts, {"video": _cloud(n, mix, 43)})
    assert np.array_equal(scores, p.threshold_scores)
    assert (scores > 1).sum() <= math.floor(TARGET * (n + 1))  # facts and members together
    assert p.calibration["threshold_fact_rate"] == pytest.approx(6 / n)
    # The member alone is then held to the rest of the budget.
    assert p.members["video"].threshold_rate <= TARGET - 6 / n + 1e-9
    assert p.facts["face_px"].widen == pytest.approx(p.global_threshold) or p.facts["face_px"].widen == 1.0

    # Held-out clips (other identities) often brighter than the fit clips: the band widens
    # to take them in, so the rate holds, but no further than they needed.
    lit = _facts(n, 41)
    lit[: n // 10, FACTS.index("brightness")] = 185.0
    q = ReferenceProfile.fit(_facts(400, 40), {"video": _cloud(400, mix, 42)}, lit,
                             {"video": _cloud(n, mix, 43)}, target_rate=TARGET)
    assert q.facts["brightness"].widen > 1.5 and q.facts["brightness"].flag_hi >= 185.0
    assert (q.threshold_scores > 1).mean() <= TARGET
    one = {**dict(zip(FACTS, lit[-1], strict=True)), "brightness": 185.0}
    emb = {"video": _cloud(1, mix, 44)[0]}
    assert not q.score(one, emb).facts["brightness"].out and p.score(one, emb).facts["brightness"].out
    assert q.score({**one, "brightness": 300.0}, emb).out


def test_save_load_round_trip_is_byte_identical_scores_equal_and_needs_no_pickle(tmp_path: Path) -> None:
    for method in ("mahalanobis", "knn"):
        p, mix = _profile(12, 200, 150, method=method)
        a, b, c = tmp_path / f"{method}_a", tmp_path / f"{method}_b", tmp_path / f"{method}_c"
        assert p.save(a) == [a / PROFILE_JSON, a / PROFILE_NPZ]
        q = ReferenceProfile.load(a)
        q.save(b)
        _profile(12, 200, 150, method=method)[0].save(c)  # the same inputs fitted again
        for name in (PROFILE_JSON, PROFILE_NPZ):
            assert (a / name).read_bytes() == (b / name).read_bytes() == (c / name).read_bytes(), name
        facts = _facts(300, 50)
        emb = {"video": _cloud(300, mix, 51, 0.3 * mix[-1]), "audio": _cloud(300, mix[::-1], 52)}
        assert np.array_equal(p.ood_scores(facts, emb), q.ood_scores(facts, emb))
        one = dict(zip(FACTS, facts[0], strict=True))
        assert p.score(one, {k: v[0] for k, v in emb.items()}) == q.score(one, {k: v[0] for k, v in emb.items()})
        with zipfile.ZipFile(a / PROFILE_NPZ) as zf:  # no clock in the bytes
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        with np.load(a / PROFILE_NPZ, allow_pickle=False) as z:
            keys = set(z.files)
            assert z["facts.fit"].shape == (200, len(FACTS))
        want = {"facts.fit", "facts.threshold", "scores.threshold"} | (
            {"video.mean", "video.precision", "audio.mean", "audio.precision"} if method == "mahalanobis"
            else {"video.reference", "audio.reference"})
        assert keys == want

        def no_constants(name: str) -> None:
            raise AssertionError(f"non-standard JSON constant {name}")

        spec = json.loads((a / PROFILE_JSON).read_text(), parse_constant=no_constants)
        assert spec["method"] == method and spec["target_rate"] == TARGET and spec["n_fit"] == 200
        assert spec["fit_splits"] == ["train"] and spec["threshold_split"] == "val"
        assert set(spec["facts"]["face_px"]["quantiles"]) == {"q0.5", "q1", "q5", "q50", "q95", "q99", "q99.5"}
        assert spec["members"]["video"]["modality"] == "video"
    assert q.reference_facts("threshold").shape == (150, len(FACTS))


def test_load_refuses_a_missing_or_foreign_profile(tmp_path: Path) -> None:
    p, _ = _profile(4, 50, 50)
    p.save(tmp_path)
    (tmp_path / PROFILE_NPZ).unlink()
    with pytest.raises(ProfileError, match="profile.npz is missing"):
        ReferenceProfile.load(tmp_path)
    p.save(tmp_path)
    spec = json.loads((tmp_path / PROFILE_JSON).read_text())
    (tmp_path / PROFILE_JSON).write_text(json.dumps({**spec, "version": 99}))
    with pytest.raises(ProfileError, match="not a veracity-profile v1"):
        ReferenceProfile.load(tmp_path)


def test_fit_refuses_bad_settings() -> None:
    f, e = _facts(10, 0), {"video": np.zeros((10, 3))}
    with pytest.raises(ProfileError, match="method"):
        ReferenceProfile.fit(f, e, f, e, method="lof")
    with pytest.raises(ProfileError, match="different members"):
        ReferenceProfile.fit(f, e, f, {"audio": np.zeros((10, 3))})
    with pytest.raises(ProfileError, match="gate_facts"):
        ReferenceProfile.fit(f, e, f, e, gate_facts=("codec",))


# ------------------------------------------------------------------------------ media facts


def _record(root: Path, crops: np.ndarray, boxes: np.ndarray, tracks: np.ndarray, kept: list[int]) -> ClipRecord:
    root.mkdir(parents=True)
    np.save(root / "faces.npy", crops)
    np.save(root / "crop_box.npy", boxes.astype(np.float32))
    np.save(root / "crop_track.npy", tracks.astype(np.int16))
    meta = {"status": "ok", "tracks": [{"track_id": t, "kept": True, "n_frames": int((tracks == t).sum())}
                                       for t in kept]}
    (root / META).write_text(json.dumps(meta))
    return ClipRecord(root)


def test_media_facts_read_face_size_brightness_and_sharpness_from_the_record(tmp_path: Path) -> None:
    s = 16
    flat = np.full((6, s, s, 3), 100, np.uint8)
    checker = ((np.indices((s, s)).sum(0) % 2) * 200).astype(np.uint8)
    sharp = np.repeat(np.repeat(checker[None, :, :, None], 3, axis=3), 4, axis=0)
    crops = np.concatenate([flat, sharp])  # track 0: six flat crops; track 1: four checkerboards
    boxes = np.array([[0, 0, 40, 40]] * 3 + [[0, 0, 60, 60]] * 3 + [[10, 10, 210, 210]] * 4)
    tracks = np.array([0] * 6 + [1] * 4)
    rec = _record(tmp_path / "r", crops, boxes, tracks, kept=[0, 1])
    row = {"duration_s": 3.5, "src_fps": 25.0, "width": 640, "height": 480, "has_audio": "True",
           "rms_dbfs": -21.5, "speech_ratio": 0.7, "face_ratio": 0.9, "status": "ok"}
    f = media_facts(rec, row, None)  # the primary track: the one with the most crops (0)
    assert list(f) == list(FACTS)
    assert f["face_px"] == 50.0 and f["brightness"] == pytest.approx(100.0) and f["sharpness"] == 0.0
    assert (f["fps"], f["width"], f["duration_s"], f["rms_dbfs"]) == (25.0, 640.0, 3.5, -21.5)
    g = media_facts(rec, {**row, "fps": 30.0, "has_audio": False}, 1)
    assert g["face_px"] == 200.0 and g["sharpness"] > 1000 and g["brightness"] == pytest.approx(100.0)
    assert g["fps"] == 30.0 and math.isnan(g["rms_dbfs"]) and math.isnan(g["speech_ratio"])
    # The centre-crop fallback is no face: no face size, but its pixels still have a brightness.
    fb = _record(tmp_path / "fb", flat, boxes[:6], np.full(6, -1), kept=[])
    h = media_facts(fb, {"duration_s": float("nan")}, None)
    assert math.isnan(h["face_px"]) and h["brightness"] == pytest.approx(100.0) and math.isnan(h["duration_s"])
