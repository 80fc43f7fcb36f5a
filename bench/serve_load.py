"""Service throughput under concurrency: batched against unbatched, and shadow mode's cost.

Run on demand (not a test)::

    .venv/bin/python bench/serve_load.py [--bundle models/bundle] [--clients 8] [--seconds 60]
        [--threads 8] [--device auto] [--out bench/results/serve_load.json]

Three real ``bentoml serve`` runs of the same bundle on loopback, one after the other, each
driven by ``--clients`` concurrent clients posting ``/analyze`` for ``--seconds`` after a
warm-up (``serving/loadgen.py``):

* ``unbatched``: ``VERACITY_BATCH_WINDOWS=0``, every request's windows in its own forward passes;
* ``batched``: ``VERACITY_BATCH_WINDOWS=64`` (the default), windows of concurrent requests
  joined in one forward pass (``veracity/batching.py``);
* ``shadow``: batched, with ``VERACITY_SHADOW=true`` and the same bundle as the challenger.

The clips are 24 synthetic talking heads from the corpus generator (seed 99, 8 people, the default
128x128, 3-4 s; cached in ``bench/.cache/load_corpus``), so the bundle judges them rather
than abstaining early. Reports completed analyses per second and p50/p95 latency for each
run, the server's CPU seconds per analysis and how busy it kept the cores (a saturated
machine serves at most cores / CPU seconds per analysis, however the passes are cut), the
batched/unbatched throughput ratio (goal >= 1.5 on 2 CPU cores) and shadow mode's p50
latency cost, with the machine, into ``--out``. ``bench/forward_batch.py`` measures what a
member's forward pass costs per window as batches grow.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.loadgen import run_load  # noqa: E402
from serving.process import ServiceProcess  # noqa: E402
from veracity.config import GenerateConfig  # noqa: E402
from veracity.corpus.synth import generate  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "load_corpus"
GOAL_RATIO = 1.5


def clips() -> list[bytes]:
    if not (CACHE / "manifest.csv").is_file():
        generate(GenerateConfig(seed=99, n_identities=8, methods_per_identity=1, workers=2), CACHE)
    return [p.read_bytes() for p in sorted((CACHE / "videos").glob("*.mp4"))]


def server_cpu_s(server: ServiceProcess) -> float:
    """CPU seconds (user + system) the server and every process under it have used so far."""
    import psutil

    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def run(name: str, bundle: Path, env: dict[str, str], data: list[bytes], args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"serve-load-{name}-") as tmp:
        server = ServiceProcess(Path(tmp), {"VERACITY_BUNDLE": str(bundle), "VERACITY_DEVICE": args.device,
                                            "VERACITY_THREADS": str(args.threads), "VERACITY_JOB_WORKERS": "0",
                                            **env}).start()
        try:
            server.wait_ready(120)
            run_load(server.url, clips=data, clients=args.clients, seconds=5, mix={"analyze": 1.0})  # warm-up
            t = time.time()
            cpu0 = server_cpu_s(server)
            result = run_load(server.url, clips=data, clients=args.clients, seconds=args.seconds,
                              mix={"analyze": 1.0})
            summary = result.summary()
            cpu = server_cpu_s(server) - cpu0
            summary["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
            # Where the time goes: a saturated machine cannot serve more than
            # cores / (CPU seconds per analysis), batched or not.
            summary["server_cpu_s_per_analysis"] = round(cpu / max(summary["completed"], 1), 4)
            summary["server_cpu_utilisation"] = round(cpu / (summary["seconds"] * (os.cpu_count() or 1)), 3)
            if env.get("VERACITY_SHADOW") == "true":
                import httpx

                summary["shadow"] = httpx.get(server.url + "/model", timeout=30).json()["rollout"]["agreement"]
            print(f"{name:10s} {summary['throughput_per_s']:.3f} analyses/s  p50 {summary['routes']['analyze']['p50_s']}"
                  f"  p95 {summary['routes']['analyze']['p95_s']}  errors {summary['errors']}"
                  f"  CPU s/analysis {summary['server_cpu_s_per_analysis']}"
                  f"  utilisation {summary['server_cpu_utilisation']}", flush=True)
            return summary
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=8, help="VERACITY_THREADS: requests handled at once")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = ap.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        sys.exit(f"no bundle at {args.bundle}: run make pipeline, or pass --bundle")
    data = clips()
    runs = {"unbatched": run("unbatched", args.bundle, {"VERACITY_BATCH_WINDOWS": "0"}, data, args),
            "batched": run("batched", args.bundle, {"VERACITY_BATCH_WINDOWS": "64"}, data, args),
            "shadow": run("shadow", args.bundle, {"VERACITY_BATCH_WINDOWS": "64", "VERACITY_SHADOW": "true",
                                                  "VERACITY_CHALLENGER_BUNDLE": str(args.bundle)}, data, args)}
    ratio = runs["batched"]["throughput_per_s"] / runs["unbatched"]["throughput_per_s"]
    shadow_cost = runs["shadow"]["routes"]["analyze"]["p50_s"] - runs["batched"]["routes"]["analyze"]["p50_s"]
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                       "load_before": os.getloadavg()},
           "settings": {"clients": args.clients, "seconds": args.seconds, "threads": args.threads,
                        "device": args.device, "clips": len(data), "bundle": str(args.bundle)},
           "runs": runs, "batched_over_unbatched": round(ratio, 3),
           "shadow_p50_cost_s": round(shadow_cost, 4),
           "goal": {"batched_over_unbatched_min": GOAL_RATIO, "met": ratio >= GOAL_RATIO}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"batched / unbatched throughput: {ratio:.3f} (goal >= {GOAL_RATIO}); shadow p50 cost {shadow_cost:+.3f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
