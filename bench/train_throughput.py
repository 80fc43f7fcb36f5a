"""Training throughput per ensemble member: windows/s of forward+backward+step.

Run on demand (not a test)::

    .venv/bin/python bench/train_throughput.py [--out bench/results/train.json] [--steps 10]

Uses random batches shaped by the data contract in ``params.yaml`` (so it needs no
extracted features) and each member's detector and batch size. On CUDA it also times
bf16 autocast against fp32, in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from veracity.config import load_params
from veracity.models import create_detector
from veracity.models.base import Batch


def random_batch(contract, batch_size: int, device: torch.device) -> Batch:
    """A batch with every modality present, shaped like real windows."""
    t, s = contract.frames_per_window, contract.face_size
    n = contract.audio_samples_per_window
    g = torch.Generator().manual_seed(0)
    return Batch(
        video=torch.randn(batch_size, t, 3, s, s, generator=g),
        flow=torch.randn(batch_size, t, 2, s // 2, s // 2, generator=g),
        audio=torch.randn(batch_size, n, generator=g) * 0.1,
        vad=torch.ones(batch_size, n // 160, dtype=torch.bool),
        video_present=torch.ones(batch_size, dtype=torch.bool),
        audio_present=torch.ones(batch_size, dtype=torch.bool),
        label=torch.randint(0, 2, (batch_size,), generator=g).float(),
        video_label=torch.randint(0, 2, (batch_size,), generator=g).float(),
        audio_label=torch.randint(0, 2, (batch_size,), generator=g).float(),
    ).to(device)


def time_member(member, contract, steps: int, device: torch.device, amp: torch.dtype | None) -> dict:
    """Windows and clips per second over ``steps`` optimiser steps (after 2 warm-up steps).

    The member is built as it is trained: its overrides, and its warm-started parts frozen
    when ``freeze_init`` is set (their weights do not matter for the timing).
    """
    batch_size = member.batch_size
    model = create_detector(member.detector, contract, **member.overrides)
    if member.freeze_init:
        for part in member.init_from:
            model.parts()[part].requires_grad_(False)
    model = model.to(device).train()
    if member.freeze_init:
        for part in member.init_from:
            model.parts()[part].eval()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    batch = random_batch(contract, batch_size, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits.float(), batch.label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - start
    wps = steps * batch_size / sec
    # An epoch draws windows_per_clip windows from every training clip.
    return {"windows_per_s": round(wps, 2), "clips_per_s": round(wps / member.windows_per_clip, 2),
            "s_per_step": round(sec / steps, 4), "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/train.json"))
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    p = load_params(args.params)
    contract = p.contract.build()
    cpu = torch.device("cpu")
    res: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                             "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
                 "contract": contract.to_dict(), "members": {}}
    for name, m in p.train.members.items():
        row = {"detector": m.detector, "batch_size": m.batch_size, "frozen_parts": sorted(m.init_from) if m.freeze_init else [],
               "cpu_fp32": time_member(m, contract, args.steps, cpu, None)}
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            row["cuda_fp32"] = time_member(m, contract, args.steps * 5, gpu, None)
            row["cuda_bf16"] = time_member(m, contract, args.steps * 5, gpu, torch.bfloat16)
            row["cuda_bf16_speedup"] = round(row["cuda_bf16"]["windows_per_s"] / row["cuda_fp32"]["windows_per_s"], 3)
        res["members"][name] = row
        print(name, json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
