"""The CPU variant of docker/Dockerfile built with buildah (no daemon), and what it holds.

Needs ``buildah`` (Debian's package) and a base image it can reach: the Dockerfile's default
(``python:3.11-slim-bookworm`` from a registry; skipped, with the pull's error, when none
answers), or ``VERACITY_IMAGE_BASE`` naming a local one (``docker/local-base.sh`` makes one
without a registry). ``VERACITY_IMAGE_MOUNTS`` adds ``-v`` mounts to the build (e.g. a uv
cache and the host's CA certificates where the build goes through a proxy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/veracity-python:test-cpu"
DEFAULT_BASE = "python:3.11-slim-bookworm"  # docker/Dockerfile's BASE


def _buildah(*args: str, timeout: int = 3600) -> str:
    proc = subprocess.run(["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"buildah {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.skipif(shutil.which("buildah") is None, reason="no image builder (apt-get install buildah)")
def test_the_cpu_image_holds_the_locked_project_and_runs_its_cli() -> None:
    base = os.environ.get("VERACITY_IMAGE_BASE")
    if base is None:
        pulled = subprocess.run(["buildah", "--storage-driver", "vfs", "pull", DEFAULT_BASE], capture_output=True,
                                text=True, timeout=600)
        if pulled.returncode != 0:
            pytest.skip(f"cannot pull {DEFAULT_BASE} (set VERACITY_IMAGE_BASE): {pulled.stderr.strip()[-300:]}")
    mounts = [x for m in os.environ.get("VERACITY_IMAGE_MOUNTS", "").split() for x in ("-v", m)]
    # No intermediate layers kept: with the vfs driver each is a full copy (gigabytes here).
    _buildah("bud", "--isolation", "chroot", "--layers=false", "-f", "docker/Dockerfile", "-t", TAG, *mounts,
             *(["--build-arg", f"BASE={base}"] if base else []), str(REPO))
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    pinned = {p["name"]: p["version"] for p in lock["package"]}
    code = ("import importlib.metadata as m, components.stages, pipelines.training, veracity.cli; "
            "print(m.version('kfp'), m.version('torch'), m.version('veracity'))")
    ctr = _buildah("from", TAG).strip()
    try:
        versions = _buildah("run", "--isolation", "chroot", ctr, "--", "python3", "-c", code).split()
        assert versions == [pinned["kfp"], pinned["torch"], pinned["veracity"]]
        assert "run-local" in _buildah("run", "--isolation", "chroot", ctr, "--", "veracity", "pipeline", "--help")
    finally:
        _buildah("rm", ctr)
        _buildah("rmi", TAG)
