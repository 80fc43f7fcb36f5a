"""A reference profile fitted for the tiny bundle: in-distribution clips pass, far inputs do not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from veracity.bundle import Bundle
from veracity.config import ExtractConfig
from veracity.contract import DataContract
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.data import ClipInfo, load_clips
from veracity.extract import extract_clip, fingerprint
from veracity.features import ClipRecord
from veracity.media.audio import hop_seconds
from veracity.media.encode import write_mp4
from veracity.models.base import Batch
from veracity.profile import (
    FACTS,
    ProfileError,
    ReferenceProfile,
    clip_embeddings,
    fit_profile,
    media_facts,
    member_embeddings,
)

pytestmark = pytest.mark.integration

TARGET = 0.02


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def features(tiny_bundle: Path, bundle: Bundle) -> Path:
    """The features the tiny bundle was trained from (``tiny_bundle``'s ``root/features``)."""
    out = tiny_bundle.parent / "features"
    assert DataContract.from_dict(json.loads((out / "contract.json").read_text())) == bundle.contract
    return out


@pytest.fixture(scope="module")
def profile(bundle: Bundle, features: Path) -> ReferenceProfile:
    return fit_profile(bundle, features, target_rate=TARGET)


def _person(bundle: Bundle, rec: ClipRecord, row: dict, has_audio: bool) -> tuple[dict, dict]:
    """Facts and clip-mean embeddings of a record's primary track, as the analyzer would take them."""
    clip = ClipInfo(video_id="x", record=rec.path, label=0, video_label=math.nan, audio_label=math.nan,
                    method="unknown", split="analyze", has_audio=has_audio, track=rec.primary_track())
    emb = clip_embeddings(bundle, [clip])
    return media_facts(rec, row, clip.track), {k: v[0] for k, v in emb.items()}


def test_the_profile_is_fitted_on_train_and_calibrated_on_val(profile: ReferenceProfile, features: Path,
                                                              bundle: Bundle, tmp_path: Path) -> None:
    n_train, n_val = len(load_clips(features, ["train"])), len(load_clips(features, ["val"]))
    assert (profile.n_fit, profile.n_threshold) == (n_train, n_val) and n_train > 0 and n_val > 0
    assert set(profile.members) == set(bundle.names)
    assert {m: st.dim for m, st in profile.members.items()} == {m.name: m.model.head[-1].in_features
                                                                 for m in bundle.members}
    assert profile.facts["face_px"].n == n_train and profile.facts["brightness"].gated
    # In-distribution held-out clips: at most the target rate (14 val clips resolve no
    # quantile finer than 1/15, so the threshold is their largest score and none is out).
    assert (profile.threshold_scores > 1).mean() <= TARGET
    assert profile.calibration["resolvable"] is False
    # Files round trip with the same scores.
    profile.save(tmp_path)
    again = ReferenceProfile.load(tmp_path)
    assert np.array_equal(again.threshold_scores, profile.threshold_scores)
    with pytest.raises(ProfileError, match="held out"):
        fit_profile(bundle, features, fit_splits=("train", "val"), threshold_split="val")
    with pytest.raises(ProfileError, match="held out"):
        fit_profile(bundle, features, fit_splits=("train",), threshold_split=("val", "train"))
    # Several held-out splits: every one of their clips sets the threshold.
    both = fit_profile(bundle, features, threshold_split=("val", "test"), target_rate=TARGET)
    n_test = len(load_clips(features, ["test"]))
    assert both.threshold_split == "val+test" and len(both.threshold_scores) == len(profile.threshold_scores) + n_test


def test_new_in_distribution_clips_stay_inside_the_profile(profile: ReferenceProfile, bundle: Bundle,
                                                           features: Path) -> None:
    clips = load_clips(features, ["test"])  # neither fitted nor calibrated on
    index = pd.read_csv(features / "index.csv").set_index("video_id")
    facts = [media_facts(ClipRecord(c.record), index.loc[c.video_id].to_dict(), None) for c in clips]
    emb = clip_embeddings(bundle, clips)
    scores = profile.ood_scores(facts, emb)
    assert len(scores) == len(clips) >= 10
    assert (scores > 1).mean() <= 0.25, scores  # ~1/15 expected; 14 held-out clips set the threshold
    one = profile.score(facts[0], {k: v[0] for k, v in emb.items()})
    assert one.ood_score == pytest.approx(scores[0])


def test_a_clip_rendered_at_four_times_the_resolution_is_out_of_profile_for_its_face_size(
        profile: ReferenceProfile, bundle: Bundle, tiny_corpus: Path, tmp_path: Path) -> None:
    size = 4 * 96  # the tiny corpus is 96x96; faces scale with the frame
    ident = sample_identity("giant", np.random.default_rng(5))
    clip = render(ClipSpec("giant", "real", ident, None, 1.2, 25, size, size, 16000, 20, 2.0, 5))
    path = write_mp4(tmp_path / "giant.mp4", clip.frames, 25, clip.audio)
    cfg = ExtractConfig(workers=1, min_duration_s=0.5)
    row = {"video_id": "giant", "path": str(path), "label": 0, "split": "test", "method": "real",
           "identity": "giant", "video_label": 0, "audio_label": 0}
    out = tmp_path / "features"
    idx = extract_clip(row, tmp_path, out, cfg, bundle.contract, fingerprint(cfg, bundle.contract))
    assert idx["status"] == "ok", idx["message"]
    rec = ClipRecord(out / idx["record"])
    facts, emb = _person(bundle, rec, idx, has_audio=True)
    r = profile.score(facts, emb)
    assert r.out and r.facts["face_px"].out and r.facts["face_px"].gated
    assert facts["face_px"] > 2.5 * profile.facts["face_px"].q_hi
    assert any(s.startswith(f"face size {facts['face_px']:.0f} px is above the profile's 99.5%") for s in r.reasons)
    assert r.facts["width"].out and not r.facts["width"].gated and any(n.startswith("width 384 px") for n in r.notes)


def test_pure_noise_windows_are_out_of_profile_for_every_member(profile: ReferenceProfile, bundle: Bundle,
                                                                features: Path) -> None:
    c = bundle.contract
    g = torch.Generator().manual_seed(0)
    b, t, s = 6, c.frames_per_window, c.face_size
    fs = max(8, s // 2)
    batch = Batch(video=torch.randn(b, t, 3, s, s, generator=g) * 2.0, flow=torch.randn(b, t, 2, fs, fs, generator=g) * 4,
                  audio=torch.randn(b, c.audio_samples_per_window, generator=g) * 0.3,
                  vad=torch.ones(b, round(c.window_seconds / hop_seconds(c.sample_rate)), dtype=torch.bool),
                  video_present=torch.ones(b, dtype=torch.bool), audio_present=torch.ones(b, dtype=torch.bool))
    per_window = member_embeddings(bundle, [batch])
    assert {k: v.shape for k, v in per_window.items()} == {m: (b, profile.members[m].dim) for m in bundle.names}
    # Media facts of an in-distribution clip: only the embeddings are out.
    clip = load_clips(features, ["val"])[0]
    row = pd.read_csv(features / "index.csv").set_index("video_id").loc[clip.video_id].to_dict()
    facts = media_facts(ClipRecord(clip.record), row, None)
    r = profile.score(facts, per_window)  # (N, D) windows are averaged to the person's embedding
    assert r.out and all(m.out for m in r.members.values()) and not any(f.out for f in r.facts.values())
    assert sorted(x.split()[1] for x in r.reasons) == sorted(bundle.names)
    assert all("embedding distance" in x and "x its threshold" in x for x in r.reasons)
    assert set(r.facts) == set(FACTS)


# ------------------------------------------------------------------------------ the analyzer honours it


@pytest.fixture(scope="module")
def profiled_bundle(bundle: Bundle, profile: ReferenceProfile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle saved again with its reference profile (checksummed under profile/)."""
    bundle.profile = profile
    try:
        extra = {k: v for k, v in bundle.spec.items() if k in ("extract", "metrics", "lineage", "data")}
        return bundle.save(tmp_path_factory.mktemp("profiled") / "bundle", extra=extra)
    finally:
        bundle.profile = None


def test_the_profile_is_part_of_the_bundle_and_checksummed(profiled_bundle: Path) -> None:
    from veracity.bundle import BundleError, verify_bundle

    spec = verify_bundle(profiled_bundle)
    assert {"profile/profile.json", "profile/profile.npz"} <= set(spec["files"])
    assert spec["profile"]["target_rate"] == TARGET
    assert Bundle.load(profiled_bundle).profile is not None
    tampered = profiled_bundle.parent / "tampered"
    import shutil

    shutil.copytree(profiled_bundle, tampered)
    (tampered / "profile" / "profile.json").write_text("{}")
    with pytest.raises(BundleError, match="profile/profile.json"):
        Bundle.load(tampered)


def test_far_input_abstains_out_of_distribution_and_a_val_clip_does_not(
        profiled_bundle: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    from veracity.analyzer import Analyzer
    from veracity.requestlog import rows_from_report

    analyzer = Analyzer(profiled_bundle, device="cpu")
    manifest = pd.read_csv(tiny_corpus / "manifest.csv")
    val = manifest[manifest["split"] == "val"]["path"].tolist()
    inside = [analyzer.analyze(tiny_corpus / p) for p in val[:4]]
    assert all(r.reason != "out_of_distribution" and r.ood is not None and not r.ood["out"] for r in inside)

    ident = sample_identity("giant", np.random.default_rng(5))
    clip = render(ClipSpec("giant", "real", ident, None, 1.2, 25, 384, 384, 16000, 20, 2.0, 5))
    far = analyzer.analyze(write_mp4(tmp_path / "giant.mp4", clip.frames, 25, clip.audio))
    assert far.verdict == "ABSTAIN" and far.reason == "out_of_distribution" and far.probability is None
    assert "face size" in far.message and far.ood["out"] and far.ood["ood_score"] > 1
    assert far.members and not any(m["reliable"] for m in far.members.values())  # kept, marked
    assert far.persons[0]["verdict"] == "ABSTAIN" and far.persons[0]["unreliable_probability"] is not None
    row = rows_from_report(far, request_id="r", endpoint="analyze", latency_s=1.0)[0]
    assert row["reason"] == "out_of_distribution" and row["ood_score"] > 1
    # the person's facts that only the crops show are logged for drift monitoring
    assert row["face_px"] == far.ood["facts"]["face_px"]["value"] > 100 and row["brightness"] is not None
