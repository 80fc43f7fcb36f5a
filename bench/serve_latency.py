"""Service latency benchmark: the HTTP routes against the same computation in process.

Run on demand (not a test)::

    .venv/bin/python bench/serve_latency.py [--bundle models/bundle] [--requests 30] [--warmup 3]
        [--port 0] [--device auto] [--out bench/results/serve_latency.json]

Starts a real ``bentoml serve serving.service:Veracity`` on loopback with ``--bundle`` (no
API key, its own state in a temporary directory), loads the same bundle in this process
(:class:`veracity.analyzer.Analyzer`) and measures, in one run, alternating HTTP and
in-process calls (which goes first alternates too) so the machine's drift hits both alike:

* ``/check_frame_batch`` with 27 JPEG face frames (a rendered talking head at 256x144,
  12.5 fps, upscaled to 640x360: a meeting server's frames) against
  ``Analyzer.check_frames`` on the same bytes: p50/p95 of each, the overhead ratio of the
  p50s (goal <= 1.10) and the HTTP p50 and p95 (goal <= 1 s on 2 CPU cores);
* ``/analyze`` on a 10-second 640x360 talking head with speech (rendered by the synthetic
  corpus's renderer, upscaled, encoded with ``write_mp4``; ``bench/.cache/360p_10s.mp4``,
  shared with ``bench/analyze_throughput.py``) against ``Analyzer.analyze`` on the same
  file: the ratio of the p50s (goal <= 1.1);
* ``/analyze`` with ``explain=true``: its extra time over plain ``/analyze`` (p50s; budget 5 s).

The in-process calls run in a worker thread, as the service runs them (BentoML's thread
for ``/check_frame_batch``, the analysis pool for ``/analyze``): on a 2-core machine the
members' forward pass called from the main thread was 10-20x slower (OpenMP threads
spin-waiting against another thread's; ``OMP_WAIT_POLICY=PASSIVE`` or one torch thread made
it go away), which would have made the service look faster than the analyzer it wraps.
``--main-thread`` measures that case instead.

Writes ``--out`` (machine, bundle sha256, every figure, the goals with pass/fail) and
prints a short table. The server is stopped on every exit, Ctrl-C included. A bundle that
cannot judge still frames (one built before video-only thresholds: the batch gets ABSTAIN
``no_thresholds`` before any member runs) has its ``/check_frame_batch`` figures left out,
with the reason, rather than timed on a path that skips the models.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import torch
from analyze_throughput import make_clip  # bench/ is on sys.path when this file is run

from serving.process import ServiceProcess
from veracity.analyzer import Analyzer
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.devices import resolve_device

ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).parent / "bentoml"
N_FRAMES = 27
FRAME_SIZE = (640, 360)
GOALS = {"frame_batch_overhead_ratio_max": 1.10, "frame_batch_p50_max_s": 1.0, "frame_batch_p95_max_s": 1.0,
         "analyze_overhead_ratio_max": 1.1, "explain_extra_max_s": 5.0}


# ------------------------------------------------------------------------------ inputs


def face_frames(n: int = N_FRAMES, size: tuple[int, int] = FRAME_SIZE, seed: int = 3) -> list[bytes]:
    """``n`` JPEG frames of one talking head at the bundle's 12.5 fps, ``size`` = (w, h)."""
    ident = sample_identity("meeting", np.random.default_rng(seed))
    clip = render(ClipSpec("meeting", "real", ident, None, n / 12.5 + 0.2, 12.5, 256, 144, 16000, 20, 2.0, seed))
    frames = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in list(clip.frames)[:n]]
    return [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
            for f in frames]


# ------------------------------------------------------------------------------ the server


# ------------------------------------------------------------------------------ measuring


def stats(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=float)
    return {"n": len(xs), "p50_s": round(float(np.percentile(a, 50)), 4),
            "p95_s": round(float(np.percentile(a, 95)), 4), "mean_s": round(float(a.mean()), 4),
            "min_s": round(float(a.min()), 4), "max_s": round(float(a.max()), 4)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def warm(calls: dict[str, Callable[[], Any]], warmup: int) -> dict[str, Any]:
    """Every call ``max(1, warmup)`` times, unmeasured; the last answer of each."""
    last: dict[str, Any] = {}
    for _ in range(max(1, warmup)):
        for name, call in calls.items():
            last[name] = call()
    return last


def measure(calls: dict[str, Callable[[], Any]], n: int) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """``n`` rounds of every call, rotating which goes first; the times and the answers."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    answers: dict[str, list[Any]] = {name: [] for name in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            dt, out = timed(calls[name])
            times[name].append(dt)
            answers[name].append(out)
    return times, answers


def steps(answers: list[Any]) -> dict[str, float]:
    """Median seconds of each step the reports time (the server's own, for HTTP answers)."""
    timings = [as_dict(a).get("timings") or {} for a in answers]
    keys = sorted({k for t in timings for k in t})
    return {k: round(float(np.median([t[k] for t in timings if k in t])), 4) for k in keys}


def as_dict(report: Any) -> dict[str, Any]:
    return report if isinstance(report, dict) else report.to_dict()


def judged(answers: dict[str, Any]) -> str | None:
    """None when every side ran the whole analysis, else why one stopped early.

    ``out_of_distribution`` counts as whole: the members, the report and the profile all ran
    (the upscaled benchmark clip's faces are larger than the synthetic corpus's).
    """
    for side, report in answers.items():
        d = as_dict(report)
        if d.get("verdict") == "ABSTAIN" and d.get("reason") != "out_of_distribution":
            return f"{side}: ABSTAIN {d.get('reason')}: {d.get('message')}"
    return None


def post_frames(client: httpx.Client, frames: list[bytes]) -> dict:
    files = [("frames", (f"f{i}.jpg", b, "image/jpeg")) for i, b in enumerate(frames)]
    r = client.post("/check_frame_batch", files=files)
    r.raise_for_status()
    return r.json()


def post_video(client: httpx.Client, data: bytes, explain: bool) -> dict:
    r = client.post("/analyze", files={"video": ("clip.mp4", data, "video/mp4")},
                    data={"explain": "true"} if explain else None)
    r.raise_for_status()
    return r.json()


def ratios(http: dict[str, float], local: dict[str, float]) -> dict[str, float]:
    return {"overhead_ratio_p50": round(http["p50_s"] / local["p50_s"], 3),
            "overhead_ratio_p95": round(http["p95_s"] / local["p95_s"], 3)}


# ------------------------------------------------------------------------------ main


def run(args: argparse.Namespace, bundle: Path) -> dict[str, Any]:
    """Every measurement, the server started and stopped inside; the results document."""
    load_before = os.getloadavg()
    frames = face_frames()
    clip = make_clip(10.0, FRAME_SIZE[1])
    video = clip.read_bytes()
    analyzer = Analyzer(bundle, device=args.device)
    device = str(resolve_device(args.device))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-in-process")

    def local(fn: Callable[..., Any], *a: Any) -> Callable[[], Any]:
        return (lambda: fn(*a)) if args.main_thread else (lambda: pool.submit(fn, *a).result())
    fb: dict[str, Any] = {"frames": N_FRAMES, "frame_size": list(FRAME_SIZE), "jpeg_bytes": sum(map(len, frames))}

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        server = ServiceProcess(Path(tmp), {"VERACITY_BUNDLE": str(bundle), "VERACITY_DEVICE": device,
                                            "VERACITY_THREADS": "4"}, port=args.port or None)
        try:
            print(f"starting the service on {server.url} with {bundle} ...", flush=True)
            health = server.start(timeout=300).wait_ready(timeout=300)
            with httpx.Client(base_url=server.url, timeout=600) as client:
                calls = {"http": lambda: post_frames(client, frames),
                         "in_process": local(analyzer.check_frames, frames)}
                print(f"/check_frame_batch: {args.warmup} warm-up + {args.requests} rounds", flush=True)
                first = warm(calls, args.warmup)
                why = judged(first)
                d = as_dict(first["http"])
                fb.update(verdict=d.get("verdict"), reason=d.get("reason"), face_ratio=d.get("face_ratio"),
                          windows=d.get("windows"))
                if why is None:
                    ft, fa = measure(calls, args.requests)
                    fb.update(http=stats(ft["http"]), in_process=stats(ft["in_process"]))
                    fb.update(ratios(fb["http"], fb["in_process"]))
                    fb.update(steps_p50={side: steps(fa[side]) for side in fa},
                              same_probability=fa["http"][-1]["probability"] == fa["in_process"][-1].probability)
                else:  # an ABSTAIN stops before the members: its time is not the route's
                    fb["skipped"] = f"the frame batch is not judged with this bundle ({why})"
                    print(f"warning: {fb['skipped']}; /check_frame_batch not measured", file=sys.stderr)

                calls = {"http": lambda: post_video(client, video, False),
                         "in_process": local(analyzer.analyze, clip),
                         "http_explain": lambda: post_video(client, video, True)}
                print(f"/analyze, explain=true: {args.warmup} warm-up + {args.requests} rounds", flush=True)
                why = judged(warm(calls, args.warmup))
                if why is not None:
                    raise SystemExit(f"the benchmark clip is not judged: {why}")
                at, aa = measure(calls, args.requests)
        finally:
            server.stop()
            pool.shutdown(wait=False, cancel_futures=True)
    load_after = os.getloadavg()

    al = {side: answers[-1] for side, answers in aa.items()}
    an: dict[str, Any] = {"http": stats(at["http"]), "in_process": stats(at["in_process"])}
    an.update(ratios(an["http"], an["in_process"]))
    an.update(clip={"file": str(clip.relative_to(ROOT)) if clip.is_relative_to(ROOT) else str(clip),
                    "source": "synthetic talking head with speech, rendered at 256x144, upscaled to 640x360, "
                              "25 fps, 10 s (bench/analyze_throughput.py make_clip)",
                    "bytes": len(video)},
              verdict=al["http"]["verdict"], same_probability=al["http"]["probability"] == al["in_process"].probability,
              steps_p50={side: steps(aa[side]) for side in ("http", "in_process")})
    ex: dict[str, Any] = {"http": stats(at["http_explain"])}
    ex["extra_p50_s"] = round(ex["http"]["p50_s"] - an["http"]["p50_s"], 3)
    ex["extra_p95_s"] = round(ex["http"]["p95_s"] - an["http"]["p95_s"], 3)
    ex["overlays"] = len((al["http_explain"].get("explanations") or {}).get("overlays", []))
    ex["steps_p50"] = steps(aa["http_explain"])

    frames_done = "http" in fb
    met: dict[str, bool | None] = {  # None: not measured
        "frame_batch_overhead": fb["overhead_ratio_p50"] <= GOALS["frame_batch_overhead_ratio_max"]
        if frames_done else None,
        "frame_batch_p50": fb["http"]["p50_s"] <= GOALS["frame_batch_p50_max_s"] if frames_done else None,
        "frame_batch_p95": fb["http"]["p95_s"] <= GOALS["frame_batch_p95_max_s"] if frames_done else None,
        "analyze_overhead": an["overhead_ratio_p50"] <= GOALS["analyze_overhead_ratio_max"],
        "explain_extra": ex["extra_p50_s"] <= GOALS["explain_extra_max_s"],
    }
    return {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "torch_threads_note": "this process's; the server inherits the same environment",
                    "device": device, "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "bundle": {**{k: analyzer.identity[k] for k in ("path", "sha256", "members", "runtime")},
                   "served_sha256": health.get("bundle_sha256")},
        "settings": {"requests": args.requests, "warmup": args.warmup,
                     "order": "alternating, which side goes first rotating",
                     "in_process_thread": "main" if args.main_thread else "worker (as the service)",
                     "client": "httpx, one keep-alive connection, no API key",
                     "figures": "client-side wall time per request; ratios are HTTP p50 / in-process p50; "
                                "steps_p50: the analyzer's own step timings (the server's, for HTTP)"},
        "check_frame_batch": fb, "analyze": an, "explain": ex,
        "goals": GOALS, "met": met, "all_met": all(v is True for v in met.values()),
    }


def table(results: dict[str, Any]) -> None:
    fb, an, ex, met, m = (results[k] for k in ("check_frame_batch", "analyze", "explain", "met", "machine"))

    def ok(key: str) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[met[key]]

    def pp(d: dict[str, Any], side: str) -> str:
        return f"{d[side]['p50_s']:.3f} / {d[side]['p95_s']:.3f} s" if side in d else "not measured"

    fr = f"{fb['overhead_ratio_p50']:.3f}" if "http" in fb else "not measured"
    rows = [
        ("frames  HTTP p50 / p95", pp(fb, "http"), "<= 1 s", f"{ok('frame_batch_p50')} / {ok('frame_batch_p95')}"),
        ("frames  in-process p50 / p95", pp(fb, "in_process"), "", ""),
        ("frames  HTTP / in-process (p50)", fr, "<= 1.10", ok("frame_batch_overhead")),
        ("analyze HTTP p50 / p95", pp(an, "http"), "", ""),
        ("analyze in-process p50 / p95", pp(an, "in_process"), "", ""),
        ("analyze HTTP / in-process (p50)", f"{an['overhead_ratio_p50']:.3f}", "<= 1.1", ok("analyze_overhead")),
        ("explain=true p50 / p95", pp(ex, "http"), "", ""),
        ("explain=true extra (p50)", f"{ex['extra_p50_s']:.3f} s", "<= 5 s", ok("explain_extra")),
    ]
    s = results["settings"]
    print(f"\n{m['cpus']} CPUs, torch threads {m['torch_threads']}, device {m['device']}, load "
          f"{m['loadavg_before'][0]:.1f} -> {m['loadavg_after'][0]:.1f}; bundle {str(results['bundle']['sha256'])[:12]}; "
          f"{s['requests']} requests after {s['warmup']} warm-up")
    for name, value, goal, verdict in rows:
        print(f"  {name:33s} {value:>20s}  {goal:>8s}  {verdict}")
    if "skipped" in fb:
        print(f"  ({fb['skipped']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle", help="bundle directory to serve")
    ap.add_argument("--requests", type=int, default=30, help="measured requests per route and side")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured calls per route and side first (at least 1)")
    ap.add_argument("--port", type=int, default=0, help="the server's port (0: a free one)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N], for the server and this process")
    ap.add_argument("--main-thread", action="store_true",
                    help="run the in-process calls on the main thread (default: a worker thread, as the service)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_latency.json")
    args = ap.parse_args()
    bundle = args.bundle.resolve()
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"no bundle at {bundle} (no bundle.json): pass --bundle")
    if args.requests < 1:
        raise SystemExit("--requests must be at least 1")
    # SIGTERM as well as Ctrl-C unwinds through run()'s finally, which stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args, bundle)
    except KeyboardInterrupt:
        print("\ninterrupted; the server has been stopped", file=sys.stderr)
        sys.exit(130)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
