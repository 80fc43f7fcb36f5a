"""Fixtures shared by the integration tests: one real service for the HTTP tests, and the
tiny pipeline's ``params.yaml`` that both orchestrators (DVC and Kubeflow) run."""

from __future__ import annotations

from pathlib import Path

import pipelinekit
import pytest
from servicekit import KEY, LIMITS, Server

from veracity.config import GenerateConfig


@pytest.fixture(scope="session")
def tiny_params(tiny_config: GenerateConfig) -> dict:
    """The repo's ``params.yaml`` sized for the tiny corpus (:func:`pipelinekit.tiny_params`)."""
    return pipelinekit.tiny_params(tiny_config)


@pytest.fixture(scope="session")
def service(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``bentoml serve`` of the tiny bundle with API key :data:`servicekit.KEY` and small limits."""
    state = tmp_path_factory.mktemp("service")
    # A temporary directory of its own: a test can then tell what the service left behind
    # from what other processes on the machine are writing to /tmp.
    (state / "tmp").mkdir()
    # Loopback is allowed for video_url: the job tests serve files from a local HTTP server.
    s = Server(state, {"VERACITY_BUNDLE": str(tiny_bundle), "VERACITY_API_KEYS": KEY, "TMPDIR": str(state / "tmp"),
                       "VERACITY_URL_ALLOW_NETWORKS": "127.0.0.0/8", **LIMITS}).start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
