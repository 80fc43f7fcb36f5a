"""Fixtures shared by the integration tests: one real service for the HTTP tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit import KEY, LIMITS, Server


@pytest.fixture(scope="session")
def service(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real ``bentoml serve`` of the tiny bundle with API key :data:`servicekit.KEY` and small limits."""
    s = Server(tmp_path_factory.mktemp("service"), {"VERACITY_BUNDLE": str(tiny_bundle), "VERACITY_API_KEYS": KEY,
                                                    **LIMITS}).start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
