"""The attack stage end to end on a tiny corpus: tiny members, a calibration file, a reduced sweep."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from veracity.bundle import Bundle
from veracity.calibration import Calibrator
from veracity.config import AttackConfig, ContractConfig, ExtractConfig, MemberConfig
from veracity.data import WindowDataset, collate, load_clips
from veracity.decision import Fusion, surrogate_fused_logit
from veracity.robustness import CorruptedCrops
from veracity.stages.attack import (
    ENSEMBLE,
    attack,
    attack_subset,
    attack_window_scores,
    fused_logit_fn,
    video_table,
    window_scores,
)

pytestmark = pytest.mark.integration

CONTRACT = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()
EXTRACT = ExtractConfig(workers=2, min_duration_s=0.5)
ONE_EPOCH = dict(epochs=1, batch_size=8, windows_per_clip=1, augment=False)
MEMBERS = {
    "v": MemberConfig(detector="tiny_video", target="video_label", **ONE_EPOCH),
    "a": MemberConfig(detector="tiny_audio", target="audio_label", **ONE_EPOCH),
    "f": MemberConfig(detector="tiny_fusion", target="label", **ONE_EPOCH),
}
CROP = ("jpeg", "downscale", "noise", "blur", "brightness")
AUDIO = ("snr", "resample", "lowpass", "gain")
SWEEP = AttackConfig(crf=(35,), jpeg_quality=(20,), downscale=(0.5,), noise_sigma=(0.1,), blur_sigma=(1.5,),
                     brightness=(0.3,), snr_db=(10.0,), resample_hz=(4000,), lowpass_hz=(1000.0,), gain_db=(-20.0,),
                     fgsm_eps=(2 / 255,), pgd_eps=(8 / 255,), pgd_steps=2, audio_eps=(0.01,), attack_clips=4,
                     gate_corruption="crf", gate_strength=35)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine
    OpenMP threads waiting for each other made this module several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setting(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory, train_tiny_members) -> dict[str, Path]:
    """Features, three tiny members and their calibration (temperature: smooth for gradients)."""
    root = tmp_path_factory.mktemp("attack")
    paths = train_tiny_members(tiny_corpus, root, MEMBERS, CONTRACT, EXTRACT)
    return {**paths, "manifest": tiny_corpus / "manifest.csv", "raw": tiny_corpus, "root": root}


def _run(setting: dict[str, Path], out: Path) -> dict:
    return attack(SWEEP, EXTRACT, setting["models"], setting["calibration"], setting["features"],
                  setting["manifest"], setting["raw"], out)


@pytest.fixture(scope="module")
def result(setting: dict[str, Path]) -> tuple[dict, pd.DataFrame, Path]:
    out = setting["root"] / "reports" / "attack"
    summary = _run(setting, out)
    return summary, pd.read_csv(out / "robustness.csv"), out


@pytest.fixture(scope="module")
def bundle(setting: dict[str, Path]) -> Bundle:
    b = Bundle.assemble(setting["models"], json.loads(setting["calibration"].read_text()))
    for m in b.members:
        m.model.eval().requires_grad_(False)
    return b


def test_every_condition_strength_and_target_has_one_row(result) -> None:
    summary, table, out = result
    targets = {"a", "f", "v", ENSEMBLE}
    corr = table[table["kind"] == "corruption"]
    assert set(corr["name"]) == {"crf", *CROP, *AUDIO}
    assert not corr.duplicated(["name", "strength", "target"]).any()
    assert corr.groupby("name")["target"].agg(set).map(lambda s: s == targets).all()
    att = table[table["kind"] == "attack"]
    assert set(att["name"]) == {"fgsm_video", "pgd_video", "fgsm_audio", "pgd_audio"}
    # A member is attacked on the fields it reads; the ensemble on both.
    assert set(att.loc[att["field"] == "video", "target"]) == {"v", "f", ENSEMBLE}
    assert set(att.loc[att["field"] == "audio", "target"]) == {"a", "f", ENSEMBLE}
    assert (att["n_clips"] <= SWEEP.attack_clips).all() and (corr.loc[corr["target"] == ENSEMBLE, "n_clips"] > 8).all()
    plot = pd.read_csv(out / "plots" / "auc_vs_strength.csv")
    assert list(plot.columns) == ["name", "strength", "target", "auc"] and len(plot) == len(table)
    assert summary["failed_extractions"] == 0 and summary["failed_by_crf"] == {"35": 0}


def test_aucs_are_probabilities_and_nan_only_without_both_classes(setting, result) -> None:
    _, table, _ = result
    ok = table["auc"].isna() | table["auc"].between(0, 1)
    assert ok.all() and table["clean_auc"].dropna().between(0, 1).all()
    # The whole test split has both classes for every target: no NaN there.
    assert table.loc[table["kind"] == "corruption", "auc"].notna().all()
    clips = attack_subset(load_clips(setting["features"], ["test"]), SWEEP.attack_clips)
    assert sorted(c.label for c in clips) == [0, 0, 1, 1]  # balanced
    for target, col in (("v", "video_label"), ("a", "audio_label"), ("f", "label"), (ENSEMBLE, "label")):
        two_classes = len({getattr(c, col) for c in clips}) == 2
        rows = table[(table["kind"] == "attack") & (table["target"] == target)]
        assert rows["auc"].notna().all() == two_classes, target
    drops = table.dropna(subset=["drop"])
    np.testing.assert_allclose(drops["drop"], drops["clean_auc"] - drops["auc"], atol=2e-6)


def test_audio_corruptions_leave_the_video_member_alone(result) -> None:
    _, table, _ = result
    rows = table[table["name"].isin(AUDIO) & (table["target"] == "v")]
    assert len(rows) == len(AUDIO)
    assert (~rows["affected"]).all() and (rows["auc"] == rows["clean_auc"]).all()
    crops = table[table["name"].isin(CROP) & (table["target"] == "a")]
    assert (~crops["affected"]).all() and (crops["auc"] == crops["clean_auc"]).all()
    assert table.loc[table["target"] == ENSEMBLE, "affected"].all()


def test_a_strong_crop_corruption_changes_the_window_scores(setting, bundle: Bundle) -> None:
    clips = load_clips(setting["features"], ["test"])
    noise = (lambda ds: CorruptedCrops("noise", 0.15, ds), ["v", "f"])
    got = window_scores(bundle, clips, CONTRACT, {"clean": (None, bundle.names), "noise": noise})
    clean, noisy = got["clean"], got["noise"]
    assert set(noisy["member"]) == {"v", "f"}  # the audio member is not rerun
    for m in ("v", "f"):
        a = clean[clean["member"] == m]["logit"].to_numpy()
        b = noisy[noisy["member"] == m]["logit"].to_numpy()
        assert a.shape == b.shape and np.abs(a - b).mean() > 1e-3
    full = pd.concat([noisy, clean[clean["member"] == "a"]])
    p_clean = video_table(bundle, clean, clips)["prob"].to_numpy()
    p_noisy = video_table(bundle, full, clips)["prob"].to_numpy()
    assert np.abs(p_clean - p_noisy).max() > 1e-3


def test_identity_corruption_reproduces_the_extracted_crops_and_flow(setting) -> None:
    ds = WindowDataset(load_clips(setting["features"], ["test"])[:3], CONTRACT)
    same = CorruptedCrops("brightness", 0.0, ds)
    for i in range(len(ds)):
        s = ds[i]
        t = same(s)
        assert t["flow"] is not s["flow"]  # recomputed from the crops, as extraction did
        torch.testing.assert_close(t["video"], s["video"], rtol=0, atol=1e-6)
        torch.testing.assert_close(t["flow"], s["flow"], rtol=0, atol=0)


def test_pgd_pushes_the_ensemble_further_than_fgsm_and_clean(setting, bundle: Bundle) -> None:
    clips = attack_subset(load_clips(setting["features"], ["test"]), 6)
    ds = WindowDataset(clips, CONTRACT)
    batch, _ = collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():  # the shortcut for members that do not read the field changes nothing
        want = torch.logit(bundle.fused_window_prob(batch).clamp(1e-6, 1 - 1e-6))
        torch.testing.assert_close(fused_logit_fn(bundle, "audio", batch)(batch), want)
    clean = window_scores(bundle, clips, CONTRACT, {"c": (None, bundle.names)})["c"]

    def loss(method: str, eps: float) -> float:
        w = clean if method == "clean" else attack_window_scores(bundle, clips, CONTRACT, ENSEMBLE, "video",
                                                                 method, eps, steps=5)
        full = pd.concat([w, clean[~clean["member"].isin(set(w["member"]))]])
        t = video_table(bundle, full, clips)
        p, y = t["prob"].to_numpy().clip(1e-6, 1 - 1e-6), t["label"].to_numpy()
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    clean_loss, fgsm_loss, pgd_loss = loss("clean", 0), loss("fgsm", 0.5 / 255), loss("pgd", 8 / 255)
    assert fgsm_loss >= clean_loss - 1e-6
    assert pgd_loss > fgsm_loss and pgd_loss > clean_loss


def test_isotonic_steps_do_not_mask_the_ensemble_gradient(setting) -> None:
    b = Bundle.assemble(setting["models"], json.loads(setting["calibration"].read_text()))
    flat = Calibrator("isotonic", x=(-60.0, -50.0, 50.0, 60.0), y=(0.1, 0.5, 0.5, 0.9))  # flat where logits are
    for m in b.members:
        m.model.eval().requires_grad_(False)
        if m.name in ("a", "f"):  # every member that hears the audio
            m.calibrator = flat
    ds = WindowDataset(load_clips(setting["features"], ["test"])[:2], CONTRACT)
    batch, _ = collate([ds[i] for i in range(len(ds))])

    def grad(fn) -> tuple[torch.Tensor, torch.Tensor]:
        audio = batch.audio.clone().requires_grad_(True)
        out = fn(dataclasses.replace(batch, audio=audio))
        return out.detach(), torch.autograd.grad(out.sum(), audio)[0]

    plain_value, plain_grad = grad(fused_logit_fn(b, "audio", batch, bpda=False))
    value, g = grad(fused_logit_fn(b, "audio", batch))
    torch.testing.assert_close(value, plain_value)  # same scores...
    assert plain_grad.abs().max() == 0 and g.abs().max() > 0  # ...but a gradient to follow


@pytest.mark.parametrize("rule", ["stacking", "weighted_mean", "noisy_or"])
def test_the_gradient_path_is_the_fusion_rule_in_log_odds(rule: str) -> None:
    fusion = Fusion(rule, ("x", "y", "z"), weights=(1.0, 2.0, 0.5), coef=(0.7, -0.2, 1.3), intercept=0.3)
    ells = torch.linspace(-4, 4, 12, dtype=torch.float64).reshape(4, 3)
    raw = fusion.raw(torch.sigmoid(ells).numpy())
    want = np.log(raw) - np.log1p(-raw)  # unclamped, unlike calibration.logit
    np.testing.assert_allclose(surrogate_fused_logit(fusion, ells).numpy(), want, rtol=1e-6, atol=1e-6)


def test_summary_gate_matches_the_table(result) -> None:
    summary, table, _ = result
    row = table[(table["name"] == "crf") & (table["strength"] == 35) & (table["target"] == ENSEMBLE)].iloc[0]
    gate = summary["gate"]
    assert gate["corruption"] == "crf" and gate["strength"] == 35
    assert gate["auc"] == pytest.approx(row["auc"]) and gate["clean_auc"] == pytest.approx(row["clean_auc"])
    assert gate["drop"] == pytest.approx(row["drop"])
    ens = table[table["target"] == ENSEMBLE]
    assert summary["worst"]["drop"] == pytest.approx(ens["drop"].max())
    assert summary["per_kind"]["crf"] == pytest.approx(row["drop"])
    assert summary["clean"][ENSEMBLE] == pytest.approx(ens.loc[ens["kind"] == "corruption", "clean_auc"].iloc[0])


def test_a_rerun_writes_the_same_bytes(setting) -> None:
    # Without the re-encode: libx264 (through reencode_video) does not always give the same
    # bitstream twice for the tiny corpus's ~1 s clips (see the note in veracity/stages/attack.py).
    sweep = SWEEP.model_copy(update={"crf": ()})
    outs = [setting["root"] / "reports" / f"rerun{i}" for i in range(2)]
    for out in outs:
        attack(sweep, EXTRACT, setting["models"], setting["calibration"], setting["features"],
               setting["manifest"], setting["raw"], out)
    for name in ("summary.json", "robustness.csv", "plots/auc_vs_strength.csv"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_missing_calibration_is_a_clear_cli_error(setting, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from veracity.cli import app

    (tmp_path / "params.yaml").write_text("attack: {}\n")
    res = CliRunner().invoke(app, ["attack", "--models", str(setting["models"]), "--calibration",
                                   str(tmp_path / "nope.json"), "--features", str(setting["features"]),
                                   "--manifest", str(setting["manifest"]), "--out", str(tmp_path / "out"),
                                   "--params", str(tmp_path / "params.yaml")])
    assert res.exit_code == 2
    assert "calibration" in res.output and "nope.json" in res.output
