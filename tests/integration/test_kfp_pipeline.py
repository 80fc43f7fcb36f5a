"""The Kubeflow pipeline run whole by KFP's real local runner on the tiny corpus, against the
bundle ``dvc repro`` builds from the same corpus and params."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from pipelinekit import TINY_MEMBERS, dvc_project, run_tool

from pipelines.run import run_local
from veracity.config import Params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _artifact_metadata(task_dir: Path, name: str) -> dict:
    """What a local task logged on an artifact (``Metrics`` live only as metadata locally)."""
    out = json.loads((task_dir / "executor_output.json").read_text())
    return out["artifacts"][name]["artifacts"][0]["metadata"]


def test_local_run_registers_a_verified_bundle_that_analyses_like_the_dvc_one(
        tmp_path: Path, tiny_corpus: Path, tiny_params: dict) -> None:
    params = copy.deepcopy(tiny_params)
    # Bounds a tiny one-epoch bundle meets, so the gate's "passed" branch (register) is the one taken.
    params["gate"].update(min_auc=0.0, min_method_auc=0.0, max_ece=1.0, max_robustness_drop=1.0)
    params["calibrate"]["thresholds"]["target_fpr"] = 0.5
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    run = run_local(Params.model_validate(params), str(tiny_corpus), tmp_path / "kfp", mlflow_uri=mlflow_uri,
                    shards=2)

    # Fan-out: two extraction shards, one task per member trained from scratch, one warm start.
    loops = [p for p in run.root.iterdir() if p.name.startswith("for-loop-")]
    assert sum((p / "extract-shard").is_dir() for p in loops) == 2
    assert sum((p / "train-member").is_dir() for p in loops) == 3
    assert sum((p / "train-warm-member").is_dir() for p in loops) == 1
    # A verified bundle out as a Model artifact, its metadata naming what it is.
    from veracity.bundle import verify_bundle

    bundle = run.output("ensemble", "bundle")
    spec = verify_bundle(bundle)
    assert {m["name"] for m in spec["members"]} == set(TINY_MEMBERS)
    meta = _artifact_metadata(run.root / "ensemble", "bundle")
    assert meta["bundle_version"] == spec["version"] and meta["sha256"].startswith("sha256:")
    assert meta["contract"] == spec["contract"]
    # Metrics with the expected keys; the ROC and confusion matrix of the benchmark.
    assert {"test.auc", "test.ece", "test.brier", "test.fpr"} <= set(_artifact_metadata(run.root / "ensemble", "summary"))
    assert {"ensemble.auc", "ensemble.ece", "ensemble.fpr"} <= set(_artifact_metadata(run.root / "benchmark", "summary"))
    roc = _artifact_metadata(run.root / "benchmark", "roc")
    assert roc["confidenceMetrics"] and len(roc["confusionMatrix"]["rows"]) == 2
    assert (run.output("validate", "page").read_text()).lstrip().lower().startswith("<!doctype html")
    # The monitor stage judged its stream against the bundle's reference.
    monitored = json.loads((run.output("monitor", "report") / "summary.json").read_text())
    assert monitored["status"] in ("drift", "no_drift") and run.output("monitor", "page").is_file()
    # The gate passed: register ran (not the other branch) and the registry holds version 1.
    assert "register" in run.tasks() and "not-registered" not in run.tasks()
    assert "# " in run.output("register", "card").read_text()
    assert "<h1>" in run.output("register", "card_page").read_text()
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=mlflow_uri).search_model_versions("name='veracity-detector'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].tags["bundle_sha256"] == meta["sha256"][7:]

    # The DVC-built bundle from the same corpus and params analyses a clip the same way.
    project = dvc_project(tmp_path / "proj", tiny_corpus, params)
    run_tool([sys.executable, "-m", "dvc", "repro", "ensemble"], project)
    from veracity.analyzer import Analyzer

    clip = sorted((tiny_corpus / "videos").glob("*.mp4"))[0]
    ours = Analyzer(bundle, device="cpu").analyze(clip).to_dict()
    theirs = Analyzer(project / "models" / "bundle", device="cpu").analyze(clip).to_dict()
    assert ours["verdict"] == theirs["verdict"]
    assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-5)
    def member_probs(report: dict) -> dict[str, float]:
        return {name: m["probability"] for name, m in report["members"].items()}

    assert member_probs(ours) == pytest.approx(member_probs(theirs), abs=1e-5)
