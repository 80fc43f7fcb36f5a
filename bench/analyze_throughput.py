"""Analyzer benchmark: end-to-end time against its two unavoidable parts, and memory on long videos.

Run on demand (not a test)::

    .venv/bin/python bench/analyze_throughput.py [--bundle models/bundle] [--out bench/results/analyze.json]
        [--long-minutes 10] [--long-height 720] [--device auto] [--heights 720 1080]

Measures, in one run so the machine's noise hits every side alike, on a 10-second
talking head with speech at each of ``--heights`` (720p and 1080p):

* (a) ``Analyzer.analyze`` end to end (extraction, evidence rules, windows, members,
  scoring, timeline, suspicious frames), with the windows scored during extraction
  (``analyze.overlap``, the default) and, for the record, after it;
* (b) the extraction step alone (``extract_clip``: decode + faces + crops + flow + audio
  + VAD), with pure PyAV frame decoding reported beside it;
* (c) the members alone: every window of the clip through ``Bundle.window_logits`` from
  batches prepared beforehand;

and reports a / (b + c) (goal <= 0.9: scoring hides behind extraction) and b / decoding
(goal <= 1.25: extraction runs near the decoder's speed). Then peak RSS (``VmHWM``) of a
fresh process analysing the 10-second clip and a long one (``--long-minutes``, default
10), and their ratio (goal <= 1.2: memory does not grow with the video's length).

Test videos are a 10-second talking head rendered at 256x144, upscaled and looped, and
streamed to the encoder frame by frame; they are cached in ``bench/.cache`` (the names
match ``bench/extract_throughput.py``, so either benchmark reuses the other's files). Their
faces (435 px at 720p) are far larger than a synthetic-corpus bundle's reference profile,
so such a bundle answers ``ABSTAIN`` ``out_of_distribution``: after every step above, its
probabilities kept for the analyst. The benchmark accepts that reason, and no other.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from veracity.analyzer import Analyzer
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.data import ClipInfo, WindowDataset, collate
from veracity.devices import resolve_device
from veracity.extract import extract_clip
from veracity.features import ClipRecord, record_dir
from veracity.media.decode import decode_only
from veracity.media.encode import write_mp4

CACHE = Path(__file__).resolve().parent / ".cache"
FPS = 25
RATE = 16000


def make_clip(seconds: float, height: int = 720) -> Path:
    """A 16:9 talking-head clip with speech of ``seconds`` at ``height`` lines (cached).

    A 10 s rendering at 256x144 is kept in memory (27 MB) and each output frame is
    upscaled from it on the fly, so making a 10-minute 720p file needs no more memory than
    a 10-second one.
    """
    width = int(round(height * 16 / 9 / 2)) * 2
    tag = f"{seconds / 60:g}min" if seconds >= 60 else f"{seconds:g}s"
    path = CACHE / f"{height}p_{tag}.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    ident = sample_identity("bench", np.random.default_rng(0))
    base = min(seconds, 10.0)
    clip = render(ClipSpec("b", "real", ident, None, base, FPS, 256, 144, RATE, 23, 2.0, 0))
    small = list(clip.frames)
    n = int(round(seconds * FPS))
    audio = np.tile(clip.audio, int(np.ceil(seconds / base)))[: int(seconds * RATE)]

    def frames():
        for i in range(n):
            yield cv2.resize(small[i % len(small)], (width, height), interpolation=cv2.INTER_LINEAR)

    return write_mp4(path, frames(), FPS, audio, RATE, crf=23, preset="veryfast")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def parts(analyzer: Analyzer, video: Path, repeats: int) -> dict:
    """Best-of-``repeats`` times of (a) the analyzer, (b) extraction, PyAV decoding, (c) forward."""
    row = {"video_id": "bench", "path": str(video.resolve())}
    after = Analyzer(analyzer.bundle, cfg=analyzer.cfg.model_copy(update={"overlap": False}))
    for a in (analyzer, after):
        a.analyze(video)  # warm-up: lazy imports, the face cascade, first-call allocations
    reports = []
    e2e = _best(lambda: reports.append(analyzer.analyze(video)), repeats)
    e2e_after = _best(lambda: after.analyze(video), repeats)
    report = reports[-1]
    if report.verdict == "ABSTAIN" and report.reason != "out_of_distribution":
        raise RuntimeError(f"{video}: {report.reason}: {report.message}")
    decode = _best(lambda: decode_only(video), repeats)
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        runs = iter(range(repeats))

        def extract_once() -> None:
            out = Path(tmp) / str(next(runs))  # a fresh directory each time: never reused
            res = extract_clip(row, video.parent, out, analyzer.extract_cfg, analyzer.contract, analyzer.fingerprint)
            if res["status"] != "ok":
                raise RuntimeError(f"{video}: {res['status']}: {res['message']}")

        extract_s = _best(extract_once, repeats)
        rec = ClipRecord(record_dir(Path(tmp) / "0", "bench"))
        clip = ClipInfo("bench", rec.path, 0, float("nan"), float("nan"), "unknown", "bench", True)
        ds = WindowDataset([clip], analyzer.contract)
        bs = analyzer.cfg.batch_size
        t = time.perf_counter()
        batches = [collate([ds[i] for i in range(s, min(s + bs, len(ds)))])[0] for s in range(0, len(ds), bs)]
        prep_s = time.perf_counter() - t
        forward_s = _best(lambda: [analyzer.bundle.window_logits(b) for b in batches], repeats)
    return {
        "video": video.name, "windows": len(ds), "frames_sampled": int(report.media.get("n_frames", 0)),
        "verdict": report.verdict, "reason": report.reason,
        "analyze_s": round(e2e, 3), "analyze_without_overlap_s": round(e2e_after, 3),
        "extract_s": round(extract_s, 3), "pyav_decode_only_s": round(decode, 3),
        "forward_s": round(forward_s, 3), "window_prep_s": round(prep_s, 3),
        "analyzer_timings": report.timings,
        "ratio_analyze_over_extract_plus_forward": round(e2e / (extract_s + forward_s), 3),
        "ratio_extract_over_decode": round(extract_s / decode, 3),
    }


_CHILD = (
    "import json, sys, time\n"
    "from veracity.analyzer import Analyzer\n"
    "a = Analyzer(sys.argv[1], device=sys.argv[3], runtime=sys.argv[4])\n"
    "t = time.perf_counter()\n"
    "r = a.analyze(sys.argv[2])\n"
    "s = time.perf_counter() - t\n"
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec.
    "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "print(json.dumps({'verdict': r.verdict, 'reason': r.reason, 'frames': r.media.get('n_frames'),"
    " 'segments': len(r.timeline), 'analyze_s': s, 'timings': r.timings, 'maxrss_kib': int(hwm)}))\n"
)


def peak_rss(bundle: Path, video: Path, device: str, runtime: str) -> dict:
    """Peak RSS (MiB) and time of a fresh interpreter analysing one video."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(bundle), str(video.resolve()), device, runtime],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise RuntimeError(f"analysis of {video} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["verdict"] == "ABSTAIN" and res["reason"] != "out_of_distribution":
        raise RuntimeError(f"{video}: {res}")
    res["peak_rss_mib"] = round(res.pop("maxrss_kib") / 1024, 1)
    res["analyze_s"] = round(res["analyze_s"], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("models/bundle"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/analyze.json"))
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--long-height", type=int, default=720,
                    help="lines of the long video (and of the short one it is compared with)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtime", default="torch", choices=("torch", "onnx"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heights", type=int, nargs="+", default=[720, 1080],
                    help="lines of the 10-second clips timed part by part")
    args = ap.parse_args()

    analyzer = Analyzer(args.bundle, device=args.device, runtime=args.runtime)
    device = str(resolve_device(args.device))
    results: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "device": device},
        "bundle": {k: analyzer.identity[k] for k in ("path", "sha256", "members", "runtime")},
        "contract": analyzer.contract.to_dict(),
        "analyze_config": analyzer.cfg.model_dump(mode="json"),
    }
    for h in args.heights:
        results[f"throughput_{h}p_10s"] = parts(analyzer, make_clip(10.0, h), args.repeats)

    short_mem = make_clip(10.0, args.long_height)
    long = make_clip(args.long_minutes * 60, args.long_height)
    mem_short = peak_rss(args.bundle, short_mem, device, args.runtime)
    mem_long = peak_rss(args.bundle, long, device, args.runtime)
    results["memory"] = {
        "height": args.long_height,
        "note": ("both clips at 720p" if args.long_height == 720 else
                 f"both clips at {args.long_height}p: --long-height lowered to keep the long analysis short"),
        "short_video": {"seconds": 10, "file": short_mem.name, **mem_short},
        "long_video": {"seconds": args.long_minutes * 60, "file": long.name, **mem_long},
        "ratio": round(mem_long["peak_rss_mib"] / mem_short["peak_rss_mib"], 3),
    }
    goals = {"analyze_over_extract_plus_forward_max": 0.9, "extract_over_decode_max": 1.25, "memory_ratio_max": 1.2}
    results["goals"] = goals
    results["met"] = {"memory": results["memory"]["ratio"] <= goals["memory_ratio_max"]}
    for h in args.heights:
        r = results[f"throughput_{h}p_10s"]
        results["met"][f"overlap_{h}p"] = r["ratio_analyze_over_extract_plus_forward"] <= goals[
            "analyze_over_extract_plus_forward_max"]
        results["met"][f"extract_near_decode_{h}p"] = r["ratio_extract_over_decode"] <= goals["extract_over_decode_max"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("contract", "analyze_config")}, indent=2))


if __name__ == "__main__":
    main()
