"""The tiny pipeline for the integration tests: its ``params.yaml``, which both orchestrators
(``dvc repro`` and the Kubeflow pipeline) run, and a scratch DVC project around it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from veracity.config import GenerateConfig, to_plain

REPO = Path(__file__).resolve().parents[1]
TINY_MEMBERS = {"video_specialist": "tiny_video", "audio_specialist": "tiny_audio", "lipsync": "tiny_lipsync",
                "av_fusion": "tiny_fusion"}


def tiny_params(tiny_config: GenerateConfig) -> dict:
    """The repo's ``params.yaml`` sized for the tiny corpus: the same stages, tiny members, one epoch."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["validate"].update(min_clips=10, min_per_method=1, min_per_split=1, max_fake_ratio=0.9)
    # The tiny corpus has ~1 s clips: shorter windows than the real defaults.
    params["validate"]["features"].update(min_frames=8, min_duration_s=0.5)
    params["extract"].update(min_duration_s=0.5)
    # The same members and stages as the real pipeline, with tiny detectors and one epoch.
    for name, tiny in TINY_MEMBERS.items():
        params["train"]["members"][name].update(detector=tiny, epochs=1, windows_per_clip=1, batch_size=8)
    # One strength per corruption and short attacks: the stages run as in the real DAG, smaller.
    params["attack"].update(crf=[35], jpeg_quality=[50], downscale=[0.5], noise_sigma=[0.05], blur_sigma=[1.0],
                            brightness=[0.2], snr_db=[10], resample_hz=[8000], lowpass_hz=[2000], gain_db=[-20],
                            fgsm_eps=[0.01], pgd_eps=[0.01], pgd_steps=2, audio_eps=[0.002], attack_clips=4)
    # The benchmark: the tiny corpus's generator with 6 other people (face swaps need a donor in
    # the same split), 1 of them re-encoded.
    params["generate"].update(to_plain(tiny_config))
    # One analysis process: a spawned pool costs a torch import each (tested in test_analyzer.py).
    params["benchmark"].update(n_identities=6, reencode_identities=1, bootstrap=100, workers=1)
    # The FAKE cuts: set on the reals of 3 new people of the tiny generator (3 clips), in this process.
    params["ensemble"]["reals"].update(n_identities=3, workers=1)
    # The monitored stream: 6 new people of the tiny generator (42 requests), judged from 20 rows.
    params["monitor"].update(sim_people=6, min_rows=20, min_column_rows=10)
    return params


def run_tool(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    """Run a command with this venv's tools first on PATH; its output (fails the test on a non-zero exit)."""
    env = {**os.environ, **(extra_env or {})}
    # dvc runs stage commands through the shell: make this venv's `veracity` the one found.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc_project(root: Path, corpus: Path, params: dict) -> Path:
    """A git+dvc project at ``root`` with the repo's dvc.yaml, ``params`` and ``corpus`` as data/raw."""
    root.mkdir(parents=True)
    for package in ("veracity", "monitoring"):  # the packages dvc.yaml's stages depend on
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(corpus, root / "data" / "raw")
    run_tool(["git", "init", "-q"], root)
    run_tool([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    run_tool([sys.executable, "-m", "dvc", "add", "-q", "data/raw"], root)
    return root
