"""The end-of-pipeline summary: a dozen lines from the reports, missing ones named."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from veracity.config import GateConfig
from veracity.summary import REPORTS, pipeline_summary


def iv(v: float, lo: float, hi: float) -> dict[str, float]:
    return {"value": v, "lo": lo, "hi": hi}


def write(root: Path, rel: str, data: dict) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(data))


def full_run(root: Path) -> None:
    (root / "data/manifest").mkdir(parents=True)
    pd.DataFrame({"label": [0, 1, 1, 0], "identity": ["a", "a", "b", "b"]}).to_csv(
        root / "data/manifest/manifest.csv", index=False)
    write(root, REPORTS["validate"], {"passed": 27, "evaluated": 27})
    write(root, REPORTS["extract"], {"usable": 4, "clips": 4, "status": {"ok": 4}, "face_found_ratio": 0.999})
    write(root, "reports/train/video_specialist.json", {"best_val_auc": 0.998})
    write(root, REPORTS["ensemble"], {"ensemble": {"test": {"auc": 1.0, "ece": 0.026, "n": 100}},
                                      "reals": {"source": "synthetic", "n": 300, "n_judged": 298, "rules": {"fused": {
                                          "fake_at": 0.382, "fake_at_val": 0.729, "reals_fpr_at_val_cut": 0.017}}}})
    write(root, REPORTS["benchmark"], {
        "n": 1000, "n_people": 125, "n_real": 250, "n_abstain": 1, "confidence": 0.95,
        "ensemble": {"auc": iv(0.9912, 0.9851, 0.9959), "ap": iv(0.997, 0.995, 0.999), "brier": iv(0.026, 0.018, 0.036),
                     "ece": iv(0.0105, 0.0093, 0.0244), "fpr": iv(0.048, 0.02, 0.076), "tpr": iv(0.963, 0.947, 0.976),
                     "uncertain_rate": iv(0.109, 0.091, 0.127)},
        "per_method": {"faceswap": {"ensemble": iv(0.988, 0.97, 0.997)}, "reenact": {"ensemble": iv(0.984, 0.972, 0.993)}},
        "reencode": {"crf": 35, "n": 256, "drop": iv(0.054, 0.026, 0.084)},
        "ece_if_calibrated": {"median": 0.012}, "thresholds": {"target_fpr": 0.05}, "target_fpr_range": [0.024, 0.08]})
    write(root, REPORTS["register"], {"model_name": "veracity-detector", "version": "1", "promoted": True,
                                      "champion_version": "1", "reasons": ["PASS auc: ...", "PASS ece: ..."]})


def test_summary_of_a_full_run_is_a_dozen_readable_lines(tmp_path: Path) -> None:
    full_run(tmp_path)
    text = pipeline_summary(tmp_path, GateConfig())
    lines = text.splitlines()
    assert 10 <= len(lines) <= 14 and max(map(len, lines)) < 200
    assert "corpus       4 clips (2 real) of 2 people; manifest checks 27/27 passed" in text
    assert "AUC 0.9912 [0.9851, 0.9959] (bar 0.99)" in text
    assert "FPR 0.048 [0.020, 0.076] at target 0.05" in text and "0.024-0.080 on 250 reals" in text
    assert "lowest reenact 0.984 [0.972, 0.993] (bar 0.97)" in text
    assert "AUC drop 0.054 [0.026, 0.084] (bar 0.05)" in text
    assert ("thresholds   FAKE at 0.382, set on 298 authentic clips of new people (synthetic); validation's cut "
            "0.729 left 0.017 of them above it") in text
    assert "gate         PASS: all 2 bars" in text
    assert "champion     veracity-detector version 1 (this run's bundle)" in text


def test_a_failed_gate_names_its_bars_and_the_champion_that_stays(tmp_path: Path) -> None:
    full_run(tmp_path)
    write(tmp_path, REPORTS["register"], {"model_name": "m", "version": "2", "promoted": False, "champion_version": "1",
                                          "reasons": ["PASS auc: x", "FAIL ece: 0.05 [0.04, 0.06], lower end > 0.03"]})
    text = pipeline_summary(tmp_path, GateConfig())
    assert "gate         FAIL: FAIL ece: 0.05 [0.04, 0.06], lower end > 0.03" in text
    assert "champion     m version 1 (this run's bundle is version 2, challenger only)" in text


def test_missing_reports_are_named_not_invented(tmp_path: Path) -> None:
    text = pipeline_summary(tmp_path, GateConfig())
    assert "no manifest at data/manifest/manifest.csv" in text
    assert f"missing: {REPORTS['extract']}" in text and f"missing: {REPORTS['benchmark']}" in text
    assert "members      validation AUC: none trained" in text
    assert f"gate         not run: {REPORTS['register']} missing" in text
