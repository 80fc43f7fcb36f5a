"""What a member's forward pass costs per window as the batch grows: what batching can save.

Run on demand (not a test)::

    .venv/bin/python bench/forward_batch.py [--bundle models/bundle] [--device auto]
        [--windows 1,2,4,8,16,32,64] [--repeats 5] [--out bench/results/forward_batch.json]

The windows are the real ones of a clip from the load benchmark's corpus
(``bench/serve_load.py``), cut by the :class:`~veracity.analyzer.Analyzer` exactly as it cuts
them for a request, then repeated to each batch size. For each batch size and member it
times :meth:`veracity.bundle.Bundle.forward` (median of ``--repeats`` after a warm-up) and
reports milliseconds per window; on CUDA also under bf16 autocast. The ratio of the cost
per window at one request's batch (``request_windows``) to the lowest cost at any larger
batch is the most that joining concurrent requests' windows into one pass can gain,
however well the micro-batcher waits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve_load import clips  # noqa: E402  (the same corpus, generated once and cached)
from veracity.analyzer import Analyzer  # noqa: E402
from veracity.batching import concat  # noqa: E402
from veracity.models.base import Batch  # noqa: E402


def request_batch(analyzer: Analyzer, clip: Path) -> Batch:
    """The batch of windows the analyzer hands the members for ``clip`` (its first one)."""
    seen: list[Batch] = []
    forward = analyzer.bundle.forward

    def spy(batch: Batch, *args, **kwargs):
        seen.append(batch)
        return forward(batch, *args, **kwargs)

    analyzer.bundle.forward = spy  # type: ignore[method-assign]
    try:
        report = analyzer.analyze(clip)
    finally:
        analyzer.bundle.forward = forward  # type: ignore[method-assign]
    if not seen:
        sys.exit(f"{clip} was not scored ({report.verdict}: {report.message})")
    return seen[0]


def time_member(analyzer: Analyzer, batch: Batch, member: str, repeats: int, bf16: bool) -> float:
    """Median seconds of one forward pass of ``member`` on ``batch``."""
    cuda = analyzer.bundle.device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    out = []
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with ctx():
            analyzer.bundle.forward(batch, [member])
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first pass warms up (allocations, kernels chosen)
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--windows", default="1,2,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "forward_batch.json")
    args = ap.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        sys.exit(f"no bundle at {args.bundle}: run make pipeline, or pass --bundle")
    sizes = sorted({int(x) for x in args.windows.split(",") if x.strip()})
    clips()  # generate the cached corpus when missing
    analyzer = Analyzer(args.bundle, device=args.device)
    clip = sorted((ROOT / "bench" / ".cache" / "load_corpus" / "videos").glob("*.mp4"))[0]
    one = request_batch(analyzer, clip)
    per_request = int(one.video.shape[0]) if one.video is not None else int(one.audio.shape[0])
    precisions = ["fp32", "bf16"] if analyzer.bundle.device.type == "cuda" else ["fp32"]
    table: dict[str, dict[str, dict[str, float]]] = {}
    for precision in precisions:
        for n in sizes:
            # n windows: the request's windows repeated (content does not change the cost).
            parts = [one] * (n // per_request) + ([_head(one, n % per_request)] if n % per_request else [])
            batch = concat(parts)
            for member in analyzer.bundle.names:
                s = time_member(analyzer, batch, member, args.repeats, precision == "bf16")
                table.setdefault(precision, {}).setdefault(member, {})[str(n)] = round(1000 * s / n, 3)
            total = sum(table[precision][m][str(n)] for m in analyzer.bundle.names)
            table[precision].setdefault("all members", {})[str(n)] = round(total, 3)
            print(f"{precision} {n:4d} windows: {total:8.3f} ms per window (all members)", flush=True)
    at_request = str(max([n for n in sizes if n <= per_request] or sizes[:1]))
    bigger = [str(n) for n in sizes if n >= int(at_request)]
    gain = {p: round(t["all members"][at_request] / min(t["all members"][n] for n in bigger), 3)
            for p, t in table.items()}
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "device": str(analyzer.bundle.device),
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "threads": torch.get_num_threads(), "load_before": os.getloadavg()},
           "bundle": str(args.bundle), "request_windows": per_request, "repeats": args.repeats,
           "ms_per_window": table,
           # The most batching can gain on the forward passes: cost per window at one
           # request's batch over the lowest cost at any larger batch.
           "max_forward_gain": gain}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"one request = {per_request} windows; most batching can gain on the forward passes: {gain}")
    print(f"wrote {args.out}")


def _head(batch: Batch, n: int) -> Batch:
    """The first ``n`` windows of ``batch``."""
    from dataclasses import fields

    return Batch(**{f.name: (None if getattr(batch, f.name) is None else getattr(batch, f.name)[:n])
                    for f in fields(Batch)})


if __name__ == "__main__":
    main()
