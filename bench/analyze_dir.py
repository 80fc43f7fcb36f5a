"""Batch analysis benchmark: clips per second of ``veracity analyze DIR`` with 1 and 2 worker processes.

Run on demand (not a test)::

    .venv/bin/python bench/analyze_dir.py [--bundle models/bundle] [--out bench/results/analyze_dir.json]
        [--clips 100] [--workers 1 2] [--device cpu] [--runtime torch]

Makes (once; cached in ``bench/.cache``) a directory of ``--clips`` short talking heads with
speech, each a different person: 3 to 4 s at 128x128 and 25 fps like the embedded corpus,
half of them real, a quarter face swaps and a quarter lip-syncs. Then, for each worker
count in turn, analyses the whole directory the way ``veracity analyze DIR --workers N``
does (:func:`veracity.pool.run_tasks`: spawned processes, one model load each, the cores
shared out) in a fresh interpreter, so that every run pays its own start-up: imports,
processes and model loads. A per-clip hook records when each clip started and ended, in
which process, and each process's peak RSS. Reported per worker count:

* ``clips_per_s``: clips / (the last clip's end - the interpreter's launch), start-up included;
* ``clips_per_s_loaded``: the clips started once every process had its model, over the
  time from that moment to the last clip's end (start-up excluded);
* ``startup_s``: launch until every process had loaded its model and taken a clip;
* ``peak_rss_mib``: each process's peak resident memory (what a worker costs);
* ``cores_busy_per_analysis``: CPU seconds over wall seconds of the analyses (the cores one
  analysis keeps busy by itself: where it is near the machine's count, more processes
  cannot help);

and the ratios of the largest worker count over one for both rates (goal: >= 1.7 with 2
workers, start-up included). The runs must agree clip by clip (verdicts, probabilities to
1e-6), or the benchmark fails.

The interpreters run with the bytecode cache the Makefile sets up (``var/pycache``): where
the environment sets PYTHONDONTWRITEBYTECODE, each spawned process would otherwise compile
torch again, and the start-up measured would be that, not the CLI's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache"
FPS = 25
RATE = 16000
SIZE = 128
METHODS = ("real", "faceswap", "real", "lipsync")  # cycled over the clips


def make_clips(n: int) -> Path:
    """A directory of ``n`` talking-head clips, each a different person (cached)."""
    import numpy as np

    from veracity.corpus.synth.families import ClipSpec, render
    from veracity.corpus.synth.identity import sample_identity
    from veracity.media.encode import write_mp4

    out = CACHE / f"analyze_dir_{n}x{SIZE}p"
    # Beside the directory, not in it: `veracity analyze DIR` would analyse it as a file.
    done = out.with_name(out.name + ".json")
    if done.is_file() and out.is_dir():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    people = [sample_identity(f"bench{i:03d}", np.random.default_rng([2026, i])) for i in range(n + 1)]
    for i in range(n):
        rng = np.random.default_rng([2026, n, i])
        method = METHODS[i % len(METHODS)]
        spec = ClipSpec(f"clip{i:03d}", method, people[i], people[i + 1] if method == "faceswap" else None,
                        round(float(rng.uniform(3.0, 4.0)), 2), FPS, SIZE, SIZE, RATE, 23, 3.0,
                        int(rng.integers(2**63)))
        clip = render(spec)
        write_mp4(tmp / f"clip{i:03d}.mp4", clip.frames, FPS, clip.audio, RATE, crf=23)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    done.write_text(json.dumps({"clips": n, "size": SIZE, "fps": FPS}) + "\n")
    return out


# ------------------------------------------------------------------ the measured interpreter


def _timed(analyzer: Any, path: str) -> dict[str, Any]:
    """One clip through the analyzer, with when and where it ran (the pool's per-task hook)."""
    start, cpu = time.time(), time.process_time()
    r = analyzer.analyze(path)
    end, cpu = time.time(), time.process_time() - cpu
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec.
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = next(line for line in status if line.startswith("VmHWM")).split()[1]
    return {"clip": Path(path).name, "pid": os.getpid(), "start": start, "end": end, "cpu_s": cpu, "verdict": r.verdict,
            "reason": r.reason, "probability": r.probability, "peak_rss_mib": round(int(hwm) / 1024, 1)}


def _failed(analyzer: Any, path: str, message: str) -> dict[str, Any]:
    return {"clip": Path(path).name, "pid": None, "start": None, "end": time.time(), "verdict": "ABSTAIN",
            "reason": "error", "probability": None, "message": message}


def child(args: argparse.Namespace) -> None:
    """Analyse every clip of ``args.clips_dir`` with ``args.child`` workers; rows as JSON on stdout.

    The imports and the listing are the CLI's (veracity.analyzer, and with it torch, is
    loaded here before any worker starts, as ``veracity analyze`` loads it)."""
    from veracity.analyzer import folder_inputs
    from veracity.pool import resolve_workers, run_tasks

    paths = [str(p) for p in folder_inputs(args.clips_dir)[0]]
    n = resolve_workers(args.child, len(paths))
    rows = list(run_tasks(paths, _timed, args.bundle, on_error=_failed, workers=n, device=args.device,
                          runtime=args.runtime))
    print(json.dumps({"workers": n, "rows": rows}))


def measure(workers: int, clips_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh interpreter analysing the directory with ``workers`` processes."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / "var" / "pycache"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(workers), "--clips-dir", str(clips_dir),
           "--bundle", str(args.bundle), "--device", args.device, "--runtime", args.runtime]
    launched = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"the run with {workers} workers failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = res["rows"]
    failed = [r for r in rows if r["pid"] is None]
    if failed:
        raise RuntimeError(f"{len(failed)} clips failed with {workers} workers: {failed[:3]}")
    last = max(r["end"] for r in rows)
    firsts: dict[int, float] = {}
    for r in rows:
        firsts[r["pid"]] = min(firsts.get(r["pid"], r["start"]), r["start"])
    ready = max(firsts.values())  # every process has its model and is analysing
    loaded = [r for r in rows if r["start"] >= ready]
    rss: dict[int, float] = {}
    for r in rows:
        rss[r["pid"]] = max(rss.get(r["pid"], 0.0), r["peak_rss_mib"])
    return {
        "workers": res["workers"], "processes_seen": len(firsts), "clips": len(rows),
        "wall_s": round(last - launched, 2), "startup_s": round(ready - launched, 2),
        "clips_per_s": round(len(rows) / (last - launched), 3),
        "clips_after_startup": len(loaded),
        "clips_per_s_loaded": round(len(loaded) / (last - ready), 3) if last > ready else None,
        "mean_clip_s": round(sum(r["end"] - r["start"] for r in rows) / len(rows), 3),
        "cores_busy_per_analysis": round(sum(r["cpu_s"] for r in rows) / sum(r["end"] - r["start"] for r in rows), 2),
        "peak_rss_mib": sorted(rss.values()),
        "verdicts": dict(Counter(r["verdict"] for r in rows)),
        "_rows": rows,
    }


def _same_reports(a: list[dict], b: list[dict]) -> list[str]:
    """Clips whose verdict or probability differ between two runs (empty when none do)."""
    out = []
    for x, y in zip(a, b, strict=True):
        px, py = x["probability"], y["probability"]
        close = (px is None and py is None) or (px is not None and py is not None and abs(px - py) <= 1e-6)
        if x["clip"] != y["clip"] or x["verdict"] != y["verdict"] or not close:
            out.append(x["clip"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/analyze_dir.json"))
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--clips-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args)
        return

    args.bundle = args.bundle.resolve()
    t = time.perf_counter()
    clips_dir = make_clips(args.clips)
    made_s = time.perf_counter() - t
    runs = {w: measure(w, clips_dir, args) for w in args.workers}
    rows = {w: r.pop("_rows") for w, r in runs.items()}
    base, top = runs[min(runs)], runs[max(runs)]
    differ = _same_reports(rows[min(runs)], rows[max(runs)])
    if differ:
        raise RuntimeError(f"the runs disagree on {len(differ)} clips: {differ[:5]}")
    bundle_json = json.loads((args.bundle / "bundle.json").read_text())
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "cpus_available": len(os.sched_getaffinity(0)), "device": args.device,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "bundle": {"path": str(args.bundle), "members": [m["name"] for m in bundle_json.get("members", [])],
                   "runtime": args.runtime},
        "clips": {"dir": str(clips_dir), "n": args.clips, "size": f"{SIZE}x{SIZE}", "fps": FPS,
                  "seconds": "3-4", "methods": sorted(set(METHODS)), "made_s": round(made_s, 1)},
        "runs": {str(w): r for w, r in runs.items()},
        "ratio": round(top["clips_per_s"] / base["clips_per_s"], 3),
        "ratio_loaded": (round(top["clips_per_s_loaded"] / base["clips_per_s_loaded"], 3)
                         if top["clips_per_s_loaded"] and base["clips_per_s_loaded"] else None),
        "reports_agree": True,
        "goal": {"workers": 2, "ratio_min": 1.7},
    }
    results["met"] = max(runs) == 2 and results["ratio"] >= 1.7
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
