"""fp32 against bf16 autocast for the members' forward passes: speed, and what it does to the figures.

Run on demand (not a test)::

    .venv/bin/python bench/precision_compare.py [--bundle models/bundle] [--corpus data/benchmark]
        [--device auto] [--repeats 7] [--skip-benchmark] [--out bench/results/precision_compare.json]

On ``--device`` (``auto``: CUDA when present), with the bundle loaded twice, once per
precision (``analyze.precision``: :func:`veracity.devices.resolve_precision`):

* **forward**: every member in one :meth:`veracity.bundle.Bundle.forward`, as the analyzer
  calls it, on the real windows of the 10-second talking head of
  ``bench/analyze_throughput.py`` (144 lines, so a pipeline bundle judges it), cycled to
  1, 4, 16 and 64 windows; best of ``--repeats``, the two precisions interleaved
  (alternating which goes first); milliseconds per batch and the fp32 / bf16 ratio (above
  1: bf16 is faster), and the largest logit difference per member;
* **analyze**: :meth:`veracity.analyzer.Analyzer.analyze` of that clip, end to end,
  interleaved the same way;
* **figures**: the benchmark stage (:func:`veracity.stages.benchmark.benchmark`, the gate's
  figures, re-encoded conditions included) run once per precision on ``--corpus``, and
  the two compared clip by clip: verdicts that differ, the largest probability
  difference, and the ensemble's AUC, ECE, FPR and TPR side by side. The calibrators and
  thresholds were fitted on fp32 logits: this says whether bf16 keeps what they promise.

``auto`` is fp32 on CPU whatever this finds, so that the gate's figures do not depend on
the CPU's instruction set; ``bf16`` is there for a CPU server that chooses it after
reading these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.analyze_throughput import make_clip  # noqa: E402  (the same cached clip)
from bench.runtime_compare import clip_windows, interleaved_best  # noqa: E402
from veracity.analyzer import Analyzer  # noqa: E402
from veracity.bundle import BUNDLE_JSON, MemberOutput  # noqa: E402
from veracity.config import load_params  # noqa: E402
from veracity.onnx_export import resized  # noqa: E402

SIZES = (1, 4, 16, 64)
PRECISIONS = ("fp32", "bf16")
FIGURES = ("auc", "ece", "fpr", "tpr", "uncertain_rate", "abstain_rate")


def forward_figures(analyzers: dict[str, Analyzer], windows: Any, repeats: int) -> dict[str, Any]:
    """Milliseconds per batch of every member together, per precision and batch size, and parity."""
    out: dict[str, Any] = {}
    for n in SIZES:
        batch = resized(windows, n)
        best = interleaved_best({p: lambda b=batch, a=a: a.bundle.forward(b) for p, a in analyzers.items()}, repeats)
        out[str(n)] = {f"{p}_ms": round(1000 * best[p], 2) for p in PRECISIONS}
        out[str(n)]["fp32_over_bf16"] = round(best["fp32"] / best["bf16"], 3)
        print(f"{n:3d} windows: fp32 {1000 * best['fp32']:7.1f} ms, bf16 {1000 * best['bf16']:7.1f} ms", flush=True)
    logits = {p: a.bundle.forward(windows) for p, a in analyzers.items()}
    out["max_abs_logit_diff"] = {}
    for name in analyzers["fp32"].bundle.names:
        a, b = logits["fp32"][name], logits["bf16"][name]
        assert isinstance(a, MemberOutput) and isinstance(b, MemberOutput)
        out["max_abs_logit_diff"][name] = float(np.max(np.abs(a.logits.astype(np.float64) - b.logits)))
    return out


def analyze_figures(analyzers: dict[str, Analyzer], video: Path, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` end-to-end analysis of ``video`` per precision, interleaved."""
    reports: dict[str, Any] = {}

    def run(p: str) -> None:
        reports[p] = analyzers[p].analyze(video)

    best = interleaved_best({p: lambda p=p: run(p) for p in PRECISIONS}, repeats)
    out: dict[str, Any] = {p: {"analyze_s": round(best[p], 3), "verdict": reports[p].verdict,
                               "probability": reports[p].probability} for p in PRECISIONS}
    out["fp32_over_bf16"] = round(best["fp32"] / best["bf16"], 3)
    return out


def benchmark_figures(bundle: Path, corpus: Path, params: Any, device: str, tmp: Path) -> dict[str, Any]:
    """The benchmark stage once per precision; its figures side by side and the clips compared."""
    from veracity.stages import benchmark as stage

    cfg = params.benchmark.model_copy(update={"device": device})
    runs: dict[str, Any] = {}
    scores: dict[str, pd.DataFrame] = {}
    for p in PRECISIONS:
        t = time.perf_counter()
        metrics = stage.benchmark(cfg, params.analyze.model_copy(update={"precision": p}), bundle, corpus,
                                  tmp / p, ece_bins=params.metrics.ece_bins)
        took = time.perf_counter() - t
        ens = metrics["ensemble"]
        runs[p] = {"seconds": round(took, 1), **{k: ens[k]["value"] for k in FIGURES if k in ens}}
        scores[p] = pd.read_csv(tmp / p / "scores.csv")
        print(f"benchmark {p}: {took:.0f} s, " + ", ".join(f"{k} {runs[p].get(k)}" for k in FIGURES), flush=True)
    a, b = (scores[p].set_index(["video_id", "condition"]) for p in PRECISIONS)
    both = a.join(b, lsuffix="_fp32", rsuffix="_bf16", how="inner")
    judged = both.dropna(subset=["probability_fp32", "probability_bf16"])
    diff = (judged["probability_fp32"] - judged["probability_bf16"]).abs()
    changed = both[both["verdict_fp32"] != both["verdict_bf16"]]
    return {"runs": runs, "clips": len(both), "judged_both": len(judged),
            "verdicts_changed": len(changed),
            "verdict_changes": [{"video_id": i[0], "condition": i[1], "fp32": r["verdict_fp32"], "bf16": r["verdict_bf16"],
                                 "p_fp32": r["probability_fp32"], "p_bf16": r["probability_bf16"]}
                                for i, r in changed.head(20).iterrows()],
            "max_abs_probability_diff": float(diff.max()) if len(diff) else None,
            "mean_abs_probability_diff": float(diff.mean()) if len(diff) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    ap.add_argument("--corpus", type=Path, default=ROOT / "data" / "benchmark")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-benchmark", action="store_true", help="speed only (the benchmark takes minutes)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision_compare.json")
    args = ap.parse_args()
    if not (args.bundle / BUNDLE_JSON).is_file():
        sys.exit(f"no bundle at {args.bundle}: run make pipeline, or pass --bundle")
    params = load_params(ROOT / "params.yaml", (), "benchmark")
    analyze = params.analyze
    analyzers = {p: Analyzer(args.bundle, device=args.device, cfg=analyze.model_copy(update={"precision": p}))
                 for p in PRECISIONS}
    device = str(analyzers["fp32"].bundle.device)
    video = make_clip(10.0, 144)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp_s:
        tmp = Path(tmp_s)
        windows = clip_windows(analyzers["fp32"], video, tmp)
        results: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None},
            "bundle": str(args.bundle), "clip": video.name, "clip_windows": windows.size, "repeats": args.repeats,
            "forward": forward_figures(analyzers, windows, args.repeats),
            "analyze": analyze_figures(analyzers, video, args.repeats),
        }
        print(f"analyze: fp32 {results['analyze']['fp32']['analyze_s']} s, "
              f"bf16 {results['analyze']['bf16']['analyze_s']} s", flush=True)
        if not args.skip_benchmark:
            results["benchmark"] = benchmark_figures(args.bundle, args.corpus, params, args.device, tmp)
    results["machine"]["load_before"], results["machine"]["load_after"] = load_before, os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results.get(k) for k in ("forward", "analyze")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
