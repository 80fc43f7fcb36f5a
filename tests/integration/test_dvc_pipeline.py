"""The real ``dvc repro`` on a scratch copy of the project: runs, caches, reruns only what changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pipelinekit import TINY_MEMBERS, dvc_project, run_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TINY = TINY_MEMBERS
STAGES = ("corpus", "validate", "extract", "validate_features", "train@video_specialist",
          "train@audio_specialist", "train@lipsync", "train_fusion@av_fusion", "evaluate", "calibrate", "attack",
          "ensemble", "benchmark_corpus", "benchmark", "register", "monitor")


def test_every_member_has_exactly_one_training_stage() -> None:
    dag = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["members"]
    plain, warm = dag["train"]["foreach"], dag["train_fusion"]["foreach"]
    assert sorted(plain + warm) == sorted(params) and not set(plain) & set(warm)
    # A warm-started member runs after the members it starts from.
    deps = set(dag["train_fusion"]["do"]["deps"])
    for name in warm:
        assert {f"models/{src}" for src in params[name]["init_from"].values()} <= deps
    for name in plain:
        assert not params[name].get("init_from")


@pytest.fixture()
def project(tmp_path: Path, tiny_corpus: Path, tiny_params: dict) -> Path:
    """A git+dvc project with the repo's dvc.yaml, the tiny params and the tiny corpus as data/raw."""
    return dvc_project(tmp_path / "proj", tiny_corpus, tiny_params)


def test_repro_runs_then_is_a_no_op_and_reruns_only_what_changed(project: Path) -> None:
    dvc = [sys.executable, "-m", "dvc"]
    first = run_tool([*dvc, "repro"], project)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first
    assert (project / "data" / "manifest" / "manifest.csv").exists()
    assert (project / "reports" / "validate" / "summary.json").exists()
    assert (project / "data" / "features" / "index.csv").exists()
    for name in TINY:
        assert (project / "models" / name / "model.safetensors").exists()
    metrics = run_tool([*dvc, "metrics", "show"], project)
    assert "True" in metrics  # summary.json: success
    assert "reports/evaluate/metrics.json" in metrics and "best_val_auc" in metrics
    for path in ("reports/calibrate/metrics.json", "reports/attack/summary.json", "reports/ensemble/metrics.json",
                 "reports/benchmark/metrics.json", "reports/register/summary.json"):
        assert path in metrics
    bench = json.loads((project / "reports" / "benchmark" / "metrics.json").read_text())
    gen = yaml.safe_load((project / "params.yaml").read_text())["generate"]
    per_person = gen["real_per_identity"] + len(gen["methods"])  # every method for every person
    assert bench["n"] == 6 * per_person and bench["n_people"] == 6
    assert bench["reencode"]["n_people"] == 1 and set(bench["ensemble"]["auc"]) == {"value", "lo", "hi"}
    # The bundle is complete and verifies; the registry has a champion (the first candidate
    # passes the gate unless its ECE or robustness misses the bounds, and tiny members may).
    from veracity.bundle import verify_bundle

    spec = verify_bundle(project / "models" / "bundle")
    assert {m["name"] for m in spec["members"]} == set(TINY)
    summary = json.loads((project / "reports" / "register" / "summary.json").read_text())
    assert summary["version"] == "1" and summary["model_name"] == "veracity-detector"
    # The registered pyfunc runs the real Analyzer on the real bundle artifact.
    clip = sorted((project / "data" / "raw" / "videos").glob("*.mp4"))[0]
    code = ("import mlflow, pandas as pd, json, sys; mlflow.set_tracking_uri('sqlite:///mlflow.db');"
            "m = mlflow.pyfunc.load_model('models:/veracity-detector/1');"
            "o = m.predict(pd.DataFrame({'path': [sys.argv[1], 'missing.mp4']}));"
            "print(json.dumps(o[['verdict', 'reason']].to_dict('records')))")
    proc = subprocess.run([sys.executable, "-c", code, str(clip)], cwd=project, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rows[0]["verdict"] in {"FAKE", "UNCERTAIN", "REAL", "ABSTAIN"}
    assert rows[1] == {"verdict": "ABSTAIN", "reason": "missing"}
    monitored = json.loads((project / "reports" / "monitor" / "summary.json").read_text())
    assert monitored["rows"] == monitored["log"]["read"] >= 20 and monitored["log"]["at_fault"] == 0
    assert monitored["status"] in ("drift", "no_drift") and (project / "reports" / "monitor" / "report.html").is_file()
    plots = run_tool([*dvc, "plots", "show", "-o", "plots_html"], project)
    html = (project / "plots_html" / "index.html").read_text()
    assert "plots_html" in plots and "video_specialist" in html and "tpr" in html

    second = run_tool([*dvc, "repro"], project)
    assert "Running stage" not in second
    # The monitor stage run again (another hash seed, a later clock) writes the same bytes.
    lock = (project / "dvc.lock").read_text()
    run_tool([*dvc, "repro", "--force", "--single-item", "monitor"], project, {"PYTHONHASHSEED": "1"})
    assert (project / "dvc.lock").read_text() == lock
    summary_text = run_tool(["veracity", "summary"], project)
    assert f"benchmark    {bench['n']} clips of 6 unseen people" in summary_text and "champion" in summary_text
    assert len(summary_text.strip().splitlines()) <= 14

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["generate"]["workers"] = 1  # changes speed, not outputs
    params["extract"]["workers"] = 1
    params["benchmark"]["workers"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage" not in run_tool([*dvc, "repro"], project)

    params["validate"]["min_clips"] = 11  # read by validate only
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run_tool([*dvc, "repro"], project)
    assert "Running stage 'validate'" in third
    for stage in ("corpus", "extract", "validate_features", "train@lipsync"):
        assert f"Running stage '{stage}'" not in third

    params["train"]["members"]["audio_specialist"]["lr"] = 0.001  # one member's own params
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = run_tool([*dvc, "repro"], project)
    for stage in ("train@audio_specialist", "train_fusion@av_fusion", "evaluate"):
        assert f"Running stage '{stage}'" in fourth
    for stage in ("extract", "train@video_specialist", "train@lipsync"):
        assert f"Running stage '{stage}'" not in fourth


def test_failed_expectation_stops_the_dag(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["validate"]["min_clips"] = 10_000
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "expect_table_row_count_to_be_between" in proc.stdout + proc.stderr
