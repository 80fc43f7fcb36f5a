"""The recurring monitoring pipeline: the committed YAML, where its task runs, and the
checks ``veracity pipeline schedule`` makes before anything reaches a cluster."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.monitoring import COMPILED, compiled_text
from veracity.cli import app
from veracity.config import load_params

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def test_the_committed_monitoring_yaml_is_what_params_yaml_compiles_to() -> None:
    assert compiled_text(load_params(REPO / "params.yaml")) == COMPILED.read_text(), (
        "pipelines/monitoring.yaml is stale: run `veracity pipeline compile`")
    params = load_params(REPO / "params.yaml", ["monitor.alpha=0.05"])
    assert compiled_text(params) != COMPILED.read_text()


def test_kfps_loader_reads_the_monitoring_task_with_its_limits_and_retries() -> None:
    from kfp.dsl.structures import ComponentSpec

    spec = ComponentSpec.from_yaml_documents(COMPILED.read_text())
    assert spec.name == "veracity-monitoring" and set(spec.inputs) >= {"log_uri", "bundle_uri", "monitor", "last"}
    doc = yaml.safe_load(COMPILED.read_text())
    task = doc["root"]["dag"]["tasks"]["monitor-log"]
    assert task["retryPolicy"]["maxRetryCount"] == 2 and task["cachingOptions"] == {}
    container = doc["deploymentSpec"]["executors"]["exec-monitor-log"]["container"]
    assert container["resources"]["cpuLimit"] == 2.0 and container["resources"]["memoryLimit"] > 0
    assert "accelerator" not in container["resources"]  # judging a log needs no GPU


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "0 * * * *"], "six fields"),
    (["--pipeline-root", "/tmp/kfp"], "object storage"),
    (["--package", "missing.yaml"], "no compiled pipeline"),
    (["--log-uri", ""], "--log-uri is required"),
])
def test_schedule_refuses_what_a_cluster_cannot_use(args: list[str], message: str) -> None:
    base = {"--host": "http://127.0.0.1:9", "--log-uri": "s3://b/requests", "--mlflow-uri": "http://m:5000",
            "--pipeline-root": "s3://b/kfp"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = runner.invoke(app, ["pipeline", "schedule", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2 and message in result.output, result.output


def test_schedule_on_an_unreachable_host_is_a_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["pipeline", "schedule", "--host", f"http://127.0.0.1:{port}",
                                 "--log-uri", "s3://b/requests", "--mlflow-uri", "http://m:5000",
                                 "--pipeline-root", "s3://b/kfp"])
    assert result.exit_code == 2 and "cannot reach Kubeflow Pipelines" in result.output
    assert "Traceback" not in result.output
