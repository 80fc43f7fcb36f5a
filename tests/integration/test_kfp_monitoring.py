"""The monitoring pipeline run once with KFP's local runner, as ``veracity pipeline
monitor-local`` runs it: a request log written as the service writes it, judged against a
real bundle (the session's tiny one, saved with a reference profile), with its report,
summary and drift flag."""

from __future__ import annotations

import json
from pathlib import Path

import monitorkit as kit
import pytest
from typer.testing import CliRunner

from monitoring.drift import Reference
from veracity.cli import app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def monitored_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a reference profile fitted on its own training features."""
    from veracity.bundle import Bundle
    from veracity.profile import fit_profile

    bundle = Bundle.load(tiny_bundle)
    bundle.profile = fit_profile(bundle, tiny_bundle.parent / "features")
    extra = {k: v for k, v in bundle.spec.items() if k in ("extract", "metrics", "lineage", "data")}
    return bundle.save(tmp_path_factory.mktemp("monitored") / "bundle", extra=extra)


def test_the_monitoring_pipeline_judges_a_log_and_says_so_in_its_exit_code(monitored_bundle: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_bundle = monitored_bundle
    sha = Reference.from_bundle(tiny_bundle).bundle_sha256
    log = kit.write_log(tmp_path / "log", [{**r, "bundle_sha256": sha} for r in kit.rows(n=70, seed=3)])
    monkeypatch.chdir(tmp_path)  # the CLI reads params.yaml from the repository
    repo = Path(__file__).resolve().parents[2]
    result = CliRunner().invoke(app, ["pipeline", "monitor-local", "--log-uri", str(log), "--bundle-uri",
                                      str(tiny_bundle), "--pipeline-root", str(tmp_path / "kfp"),
                                      "--params", str(repo / "params.yaml"), "--root", str(tmp_path)])
    assert result.exit_code in (0, 1), result.output
    run = next((tmp_path / "kfp").glob("veracity-monitoring-*"))
    summary = json.loads(next(run.glob("monitor-log/report/summary.json")).read_text())
    assert summary["judged"] and summary["rows"] == 70 and summary["reference"]["bundle_sha256"] == sha
    assert result.exit_code == int(summary["drift_detected"])
    assert ("drift found" if summary["drift_detected"] else "no drift found") in result.output
    assert (run / "monitor-log" / "page").read_text().lstrip().lower().startswith("<!doctype html")
    figures = json.loads((run / "monitor-log" / "summary").read_text())
    assert figures["drift_detected"] == int(summary["drift_detected"]) and figures["rows"] == 70
