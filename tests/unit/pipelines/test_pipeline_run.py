"""``veracity pipeline``: compile with another image, and the checks that keep a bad run
request from becoming a traceback (no cluster here: a closed loopback port stands for an
unreachable host)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.run import PipelineError, check_host, check_pipeline_root
from veracity.cli import app

runner = CliRunner()


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_compile_puts_the_given_image_on_every_task(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = runner.invoke(app, ["pipeline", "compile", "--out", str(out), "--image", "reg.example/veracity:1.0"])
    assert result.exit_code == 0, result.output
    executors = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"reg.example/veracity:1.0"}


def test_an_unreachable_host_is_a_message_within_the_timeout(closed_port: int) -> None:
    t0 = time.perf_counter()
    with pytest.raises(PipelineError, match=f"cannot reach Kubeflow Pipelines at http://127.0.0.1:{closed_port}"):
        check_host(f"http://127.0.0.1:{closed_port}", timeout=5)
    assert time.perf_counter() - t0 < 5


def test_submit_to_an_unreachable_host_exits_2_without_a_traceback(closed_port: int) -> None:
    result = runner.invoke(app, ["pipeline", "submit", "--host", f"http://127.0.0.1:{closed_port}",
                                 "--corpus-uri", "s3://bucket/raw", "--mlflow-uri", "http://mlflow:5000",
                                 "--pipeline-root", "s3://bucket/kfp"])
    assert result.exit_code == 2
    assert "cannot reach Kubeflow Pipelines" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--pipeline-root", "/tmp/kfp"], "object storage"),
    (["--pipeline-root", "s3://b/kfp", "--host", "kfp.example.org"], "http(s) URL"),
    (["--pipeline-root", "s3://b/kfp", "--package", "missing.yaml"], "no compiled pipeline"),
])
def test_submit_refuses_what_a_cluster_cannot_use(args: list[str], message: str) -> None:
    base = {"--host": "http://127.0.0.1:9", "--corpus-uri": "s3://b/raw", "--mlflow-uri": "http://m:5000"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = runner.invoke(app, ["pipeline", "submit", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2 and message in result.output, result.output


def test_pipeline_roots_must_be_object_storage() -> None:
    check_pipeline_root("gs://bucket/kfp")
    check_pipeline_root("minio://mlpipeline/v2/artifacts")
    with pytest.raises(PipelineError):
        check_pipeline_root("file:///tmp/kfp")


def test_run_local_without_a_corpus_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pipeline", "run-local", "--corpus-uri", str(tmp_path / "none"),
                                 "--pipeline-root", str(tmp_path / "kfp")])
    assert result.exit_code == 2 and "is not a directory" in result.output
    assert not (tmp_path / "kfp").exists()


@pytest.mark.slow  # two task processes importing the project: 30 s to 2 min on a busy 2-core machine
def test_a_failing_task_stops_the_local_run_and_is_named(tmp_path: Path) -> None:
    from pipelines.run import run_local
    from veracity.config import load_params

    (tmp_path / "corpus").mkdir()  # a synthetic corpus without its manifest.csv
    # The benchmark corpus does not wait on the corpus: refused at once too (its seed is the
    # training corpus's), not generated at full size.
    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml", ["benchmark.seed=1337"])
    with pytest.raises(PipelineError, match="Inner task failed: '(benchmark-)?corpus'") as err:
        run_local(params, str(tmp_path / "corpus"), tmp_path / "kfp")
    assert "\x1b[" not in str(err.value)
    assert not list((tmp_path / "kfp").glob("*/validate"))
