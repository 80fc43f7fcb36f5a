"""The service's image is described and `bentoml build` works offline (CPU and CUDA variants)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("bentofile", ["serving/bentofile.yaml", "serving/bentofile.cuda.yaml"])
def test_bentoml_build_packs_the_service_and_the_locked_requirements(bentofile: str, tmp_path: Path) -> None:
    uv = ROOT / ".tools" / "bin" / "uv"
    if not uv.exists():
        pytest.skip("uv is installed by `make setup` under .tools/")
    req = ROOT / "var" / "bento" / "requirements.txt"
    req.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(uv), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "-o", str(req)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "PATH": f"{uv.parent}:{BIN}:{os.environ.get('PATH', '')}"}
    build = subprocess.run([str(BIN / "bentoml"), "build", "-f", bentofile, "."], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    bentos = list((tmp_path / "bentoml" / "bentos" / "veracity").glob("*/bento.yaml"))
    assert len(bentos) == 1
    src = bentos[0].parent / "src"
    assert (src / "serving" / "service.py").is_file() and (src / "veracity" / "analyzer.py").is_file()
    assert not (src / "tests").exists() and not (src / "data").exists()
    reqs = (bentos[0].parent / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in reqs and "bentoml==1.4.39" in reqs
    spec = bentos[0].read_text()
    assert ("cuda_version: 12.8" in spec) == bentofile.endswith("cuda.yaml")
