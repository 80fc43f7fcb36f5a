"""The evaluate stage on hand-made predictions: tables, quality checks and plot data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from veracity import metrics
from veracity.evaluate import evaluate

pytestmark = pytest.mark.integration
METHODS = ["real"] * 8 + ["faceswap", "lipsync", "voice"] * 4


def _write(models: Path, member: str, score) -> None:
    rows = []
    for split in ("val", "test"):
        for i, m in enumerate(METHODS):
            label = int(m != "real")
            rows.append({"member": member, "video_id": f"{split}{i}", "split": split, "method": m, "label": label,
                         "video_label": int(m in ("faceswap", "lipsync")), "audio_label": int(m == "voice"),
                         "prob": float(score(m))})
    df = pd.DataFrame(rows)
    df["logit"] = np.log(df.prob / (1 - df.prob))
    (models / member).mkdir(parents=True)
    df.to_csv(models / member / "predictions.csv", index=False)


def test_quality_checks_and_outputs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    # audio sees only voice fakes; video sees face swaps only; fusion sees everything. A
    # member blind to a family scores it like the real clips (ties: AUC 0.5).
    _write(models, "audio", lambda m: 0.9 if m == "voice" else 0.1)
    _write(models, "video", lambda m: 0.9 if m == "faceswap" else 0.1)
    _write(models, "fusion", lambda m: 0.9 if m != "real" else 0.1)
    res = evaluate(models, ["audio", "video", "fusion"], tmp_path / "rep",
                   roles={"audio": "audio", "video": "video", "fusion": "fusion"}, ece_bins=10)
    checks = {c.name: c for c in res["checks"]}
    assert checks["best_member_auc"].value == pytest.approx(1.0) and checks["best_member_auc"].passed
    assert checks["voice_family_auc_audio"].passed
    assert checks["lipsync_family_auc_sync_or_fusion"].passed
    assert checks["lipsync_family_auc_video_only"].value == pytest.approx(0.5)  # blind to lip sync
    table = pd.read_csv(tmp_path / "rep" / "per_method.csv", index_col=0)
    assert table.loc["voice", "audio"] == pytest.approx(1.0) and table.loc["voice", "video"] < 0.75
    summary = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert set(summary["members"]) == {"audio", "video", "fusion"}
    assert summary["quality"]["voice_family_auc_audio"]["passed"] is True
    roc = pd.read_csv(tmp_path / "rep" / "plots" / "roc.csv")
    assert set(roc.member) == {"audio", "video", "fusion"} and roc.fpr.between(0, 1).all()
    conf = pd.read_csv(tmp_path / "rep" / "plots" / "confusion.csv")
    assert len(conf) == 3 * len(METHODS)  # one row per test clip and member
    assert (tmp_path / "rep" / "curves.png").stat().st_size > 10_000


def test_missing_member_predictions_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train it first"):
        evaluate(tmp_path, ["ghost"], tmp_path / "rep", ece_bins=10)


def test_ece_bins_are_the_callers(tmp_path: Path) -> None:
    # One value (metrics.ece_bins) for the summary, the table and the reliability diagram.
    models = tmp_path / "models"
    # Reals and lip-sync fakes share a bin of 0.5, not a bin of 0.1: the two ECEs differ.
    _write(models, "m", lambda m: {"real": 0.3, "faceswap": 0.55, "lipsync": 0.35, "voice": 0.95}[m])
    with pytest.raises(TypeError):
        evaluate(models, ["m"], tmp_path / "none")  # no default number of bins
    for bins in (2, 10):
        out = tmp_path / f"rep{bins}"
        evaluate(models, ["m"], out, ece_bins=bins)
        preds = pd.read_csv(models / "m" / "predictions.csv")
        test = preds[preds.split == "test"]
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["members"]["m"]["ece"] == pytest.approx(metrics.ece(test.label, test.prob, bins))
        table = pd.read_csv(out / "table.csv")
        row = table[(table.split == "test") & (table.method == "all")].iloc[0]
        assert row.ece == pytest.approx(metrics.ece(test.label, test.prob, bins))
        assert len(pd.read_csv(out / "plots" / "reliability.csv")) == bins
    assert metrics.ece(test.label, test.prob, 2) != pytest.approx(metrics.ece(test.label, test.prob, 10))
