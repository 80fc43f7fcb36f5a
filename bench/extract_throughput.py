"""Extraction benchmark: throughput against decode-only, and memory on long videos.

Run on demand (not a test)::

    .venv/bin/python bench/extract_throughput.py [--out bench/results/extract.json]
        [--videos ../shared/realworld/videos]

Measures, in one run so the machine's noise hits both sides alike:

* throughput: clips/s of full extraction (faces, tracking, crops, flow, audio, VAD)
  against a decode-only pass (every frame decoded, nothing converted) over the same
  files, for the synthetic corpus clips and for 720p clips; goal >= 0.8; and, for the
  record, extraction with a whole-frame scan at every detection (``scan_every`` =
  ``detect_every``), what the search near the tracked faces saves, and with every crop
  converted to RGB before it is averaged down, what averaging large faces in YUV saves;
* memory: peak RSS of a fresh process extracting a 10-minute 720p video against the same
  for a 10-second one; goal <= 1.2.

Long test videos are made once (a rendered talking head, upscaled to 720p and looped)
and cached in ``bench/.cache``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

from veracity.config import ExtractConfig, load_params
from veracity.contract import DataContract
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.extract import extract_clip, fingerprint
from veracity.media import decode
from veracity.media.decode import FrameReader, MediaError, decode_only
from veracity.status import CODE_FAILURE_STATUSES

CACHE = Path(__file__).resolve().parent / ".cache"


def make_720p(path: Path, seconds: float) -> Path:
    """A 1280x720 talking-head clip with speech; loops a 10 s rendering for long durations."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ident = sample_identity("bench", rng)
    base = min(seconds, 10.0)
    clip = render(ClipSpec("b", "real", ident, None, base, 25, 256, 144, 16000, 23, 2.0, 0))
    frames = [cv2.resize(f, (1280, 720), interpolation=cv2.INTER_LINEAR) for f in clip.frames]
    reps = int(np.ceil(seconds / base))
    audio = np.tile(clip.audio, reps)[: int(seconds * 16000)]
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 1280, 720, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        as_ = c.add_stream("aac", rate=16000)
        as_.layout = "mono"
        n = int(seconds * 25)
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            vf.pts = i
            c.mux(vs.encode(vf))
            if i % 25 == 24 or i == n - 1:
                a0, a1 = (i // 25) * 16000, min(len(audio), (i // 25 + 1) * 16000)
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, a0:a1]), format="flt", layout="mono")
                af.sample_rate, af.pts = 16000, a0
                c.mux(as_.encode(af))
        c.mux(vs.encode(None))
        c.mux(as_.encode(None))
    tmp.rename(path)
    return path


def _extract_files(files: list[Path], cfg: ExtractConfig, contract: DataContract, out: Path,
                   any_media: bool = False) -> float:
    fp = fingerprint(cfg, contract) + str(time.time_ns())  # never reuse: measure real work
    start = time.perf_counter()
    for i, f in enumerate(files):
        row = {"video_id": f"{f.stem}_{i}", "path": str(f.resolve()), "label": 0, "split": "test",
               "method": "real", "identity": "x", "video_label": 0, "audio_label": 0}
        res = extract_clip(row, f.parent, out, cfg, contract, fp)
        if res["status"] in CODE_FAILURE_STATUSES or (res["status"] != "ok" and not any_media):
            raise RuntimeError(f"{f}: {res['status']}: {res['message']}")
    return time.perf_counter() - start


def _decode_files(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        decode_only(f)
    return time.perf_counter() - start


def _skipped_share(files: list[Path], fps: float) -> float:
    """Share of the files' frames a FrameReader at ``fps`` left undecoded (SkipPlan)."""
    decoded = skipped = 0
    for f in files:
        try:
            reader = FrameReader(f, fps)
        except MediaError:
            continue
        for _ in reader:
            pass
        decoded, skipped = decoded + reader.decoded, skipped + reader.skipped
    return skipped / max(decoded, 1)


@contextlib.contextmanager
def _crops_converted_first():
    """Every crop converted to RGB, then averaged down (no box is large enough for the
    YUV path of ``SampledFrame.crop_resized``)."""
    saved = decode.SHRINK_FIRST
    decode.SHRINK_FIRST = 1 << 30
    try:
        yield
    finally:
        decode.SHRINK_FIRST = saved


def throughput(files: list[Path], cfg: ExtractConfig, contract: DataContract, out: Path, repeats: int = 2,
               any_media: bool = False) -> dict:
    """Best-of-``repeats`` wall time of decode-only and of extraction over the same files, of
    extraction that scans the whole frame at every detection (``scan_every`` =
    ``detect_every``: no search near the tracked faces), and of extraction that converts
    every crop before averaging it down, the four taking turns."""
    whole = cfg.model_copy(update={"scan_every": cfg.detect_every})
    decode_s = extract_s = whole_s = first_s = float("inf")
    for _ in range(repeats):
        decode_s = min(decode_s, _decode_files(files))
        extract_s = min(extract_s, _extract_files(files, cfg, contract, out, any_media))
        whole_s = min(whole_s, _extract_files(files, whole, contract, out, any_media))
        with _crops_converted_first():
            first_s = min(first_s, _extract_files(files, cfg, contract, out, any_media))
    return {
        "frames_not_decoded": round(_skipped_share(sorted(set(files)), contract.fps), 3),
        "clips": len(files),
        "decode_only_s": round(decode_s, 3),
        "extract_s": round(extract_s, 3),
        "extract_whole_frame_scans_s": round(whole_s, 3),
        "extract_crops_converted_first_s": round(first_s, 3),
        "decode_only_clips_per_s": round(len(files) / decode_s, 2),
        "extract_clips_per_s": round(len(files) / extract_s, 2),
        "ratio": round(decode_s / extract_s, 3),
        "ratio_whole_frame_scans": round(decode_s / whole_s, 3),
        "ratio_crops_converted_first": round(decode_s / first_s, 3),
    }


def _peak_rss_child(video: Path, out: Path, params: Path) -> float:
    """Peak RSS (MiB) of a fresh interpreter that extracts one video."""
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from veracity.config import load_params\n"
        "from veracity.extract import extract_clip, fingerprint\n"
        "p = load_params(Path(sys.argv[3]))\n"
        "cfg, contract = p.extract, p.contract.build()\n"
        "f = Path(sys.argv[1])\n"
        "row = {'video_id': f.stem, 'path': str(f), 'label': 0, 'split': 'test', 'method': 'real',"
        " 'identity': 'x', 'video_label': 0, 'audio_label': 0}\n"
        # A fingerprint of its own: a record left by an earlier run would be reused, not made.
        "res = extract_clip(row, f.parent, Path(sys.argv[2]), cfg, contract, sys.argv[4])\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(json.dumps({'status': res['status'], 'n_frames': res['n_frames'], 'maxrss_kib': int(hwm),"
        " 'reused': bool(res.get('reused'))}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(video.resolve()), str(out), str(params),
                           f"bench-{time.time_ns()}"],
                          capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res["status"] != "ok" or res["reused"]:
        raise RuntimeError(f"{video}: {res}")
    return res["maxrss_kib"] / 1024, res["n_frames"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/results/extract.json"))
    ap.add_argument("--corpus", type=Path, default=Path("data/raw"), help="synthetic corpus for the small-clip case")
    ap.add_argument("--n-corpus", type=int, default=40)
    ap.add_argument("--long-minutes", type=float, default=10.0)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--videos", type=Path, default=None,
                    help="a folder of real footage also timed (evaluation only: nothing is fitted on it)")
    args = ap.parse_args()

    params = load_params(args.params)
    cfg, contract = params.extract, params.contract.build()
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
                     "extract_config": cfg.model_dump(mode="json"), "contract": contract.to_dict()}

    corpus = sorted((args.corpus / "videos").glob("*.mp4"))[: args.n_corpus]
    if corpus:
        results["throughput_corpus_128px"] = throughput(corpus, cfg, contract, work)
    if args.videos is not None:
        real = sorted(f for f in args.videos.iterdir() if f.suffix.lower() in (".mp4", ".mov", ".mkv", ".webm", ".avi"))
        results["throughput_videos"] = {"folder": str(args.videos),
                                        **throughput(real, cfg, contract, work, any_media=True)}
    short = make_720p(CACHE / "720p_10s.mp4", 10.0)
    results["throughput_720p"] = throughput([short] * 3, cfg, contract, work)
    long = make_720p(CACHE / f"720p_{args.long_minutes:g}min.mp4", args.long_minutes * 60)
    rss_short, n_short = _peak_rss_child(short, work, args.params)
    rss_long, n_long = _peak_rss_child(long, work, args.params)
    results["memory"] = {
        "short_video": {"seconds": 10, "frames_sampled": n_short, "peak_rss_mib": round(rss_short, 1)},
        "long_video": {"seconds": args.long_minutes * 60, "frames_sampled": n_long, "peak_rss_mib": round(rss_long, 1)},
        "ratio": round(rss_long / rss_short, 3),
    }
    results["goals"] = {"throughput_ratio_min": 0.8, "memory_ratio_max": 1.2}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k not in ("extract_config", "contract")}, indent=2))


if __name__ == "__main__":
    main()
