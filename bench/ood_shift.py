"""How often the bundle's reference profile flags synthetic distribution shift (no real data).

A small corpus of people that no split has seen is generated with the project's own
generator (the ``generate`` section of ``params.yaml``, through
:func:`veracity.stages.generate.benchmark_corpus`, with ``--seed`` and ``--people``: every
method for every person), then copied under each shift:

* ``control``: the base clips decoded and re-encoded by the same path as ``lighting`` and
  ``face_style`` (``write_mp4`` at ``generate.crf``, audio packets copied) with no change
  to the pixels: what a second encode alone does, to read the shifts below against.
* ``hires``: the same people, utterances and seeds generated at ``--hires`` px square
  instead of ``generate.width`` x ``generate.height`` (the generator scales the head with
  the frame, so faces are larger in pixels). Rendered, not upscaled.
* ``heavy_compression``: the base clips through :func:`veracity.robustness.reencode_video`
  at CRF 45 (audio re-encoded to AAC).
* ``lighting``: another lighting model. Per pixel, RGB in [0, 1]: gamma 1.6 (darker
  midtones), times a side light that falls linearly from 1.35 at the right edge to 0.45 at
  the left, times a tungsten white balance (R x1.12, G x1.0, B x0.70), clipped. Audio
  packets copied.
* ``face_style``: a cartoon rendering. Two passes of a bilateral filter (d 7, sigma 60/7)
  flatten skin texture, each channel is posterised to 6 levels, and dark outlines from an
  adaptive threshold of the median-blurred luma (block 9, C 3) are drawn on top. Audio
  packets copied.
* ``voice``: another voice model. The generator's voice is additive glottal harmonics
  (f0 95-240 Hz) shaped by three Lorentzian formants plus breath noise. Here the base
  audio's spectral envelope is kept (order-18 LPC per 25 ms Hann frame, 10 ms hop) and
  re-excited with a monotone 320 Hz impulse train in voiced frames and white noise in the
  others (an all-pole LPC vocoder: flat pitch above the generator's range, no harmonic
  amplitude model, no jitter), overlap-added and brought back to the frame's RMS. Video
  packets copied.

Every clip of the base and of each shift is analysed by
:class:`veracity.analyzer.Analyzer` on the CPU (the served path). Per shift the results
give the share flagged ``out_of_distribution``, other abstentions by reason, the verdicts,
the median OOD score and which parts of the profile fired (members' embedding distances,
gated media facts, facts that only note). Nothing is fitted here: it only measures.

    python bench/ood_shift.py                                   # models/bundle, 8 people
    python bench/ood_shift.py --bundle path --people 6 --shifts control voice
        [--seed 4242] [--hires 256] [--work var/ood_shift] [--workers 1]
        [--out bench/results/ood_shift.json]

The corpora live under ``--work`` (the generated ones are reused while the generator's
fingerprint holds; the derived shifts are rewritten each run). Writes ``--out`` (settings,
machine, the summary per shift and every clip) and prints a table. Not a test.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from scipy import signal
from scipy.linalg import solve_toeplitz

REPO = Path(__file__).resolve().parents[1]
BASE = "base"
SHIFTS = ("control", "hires", "heavy_compression", "lighting", "face_style", "voice")
OOD = "out_of_distribution"
HEAVY_CRF = 45

# ------------------------------------------------------------------------------ corpora


def generate_corpora(params: Any, seed: int, people: int, hires: int | None, work: Path) -> dict[str, Path]:
    """The base corpus (and the ``hires`` one when ``hires``) of ``people`` new people.

    Both are the ``generate`` section with ``seed`` and ``people`` (as the benchmark
    corpus is made); ``hires`` only changes the frame size, so the same plan (people,
    utterances, clip seeds, video ids) is rendered larger.
    """
    from veracity.config import BenchmarkConfig, GenerateConfig
    from veracity.stages.generate import benchmark_corpus

    if seed == params.benchmark.seed:
        raise SystemExit(f"--seed {seed} is benchmark.seed: choose people neither the training nor the benchmark "
                         "corpus holds")
    bench_cfg = BenchmarkConfig(**{**params.benchmark.model_dump(), "seed": seed, "n_identities": people})
    out = {BASE: work / BASE}
    todo = [(BASE, params.generate)]
    if hires:
        out["hires"] = work / "hires"
        todo.append(("hires", GenerateConfig(**{**params.generate.model_dump(), "width": hires, "height": hires})))
    for name, gen in todo:
        t = time.perf_counter()
        got = benchmark_corpus(gen, bench_cfg, out[name])
        print(f"{name}: {'up to date' if got.skipped else f'{got.n_clips} clips generated'} "
              f"({gen.width}x{gen.height}, {time.perf_counter() - t:.0f} s)", flush=True)
    return out


# ------------------------------------------------------------------------------ media I/O


def read_frames(path: Path) -> tuple[list[np.ndarray], int]:
    """Every frame of ``path`` as RGB uint8, and its (integer) frame rate."""
    with av.open(str(path)) as inp:
        stream = inp.streams.video[0]
        fps = int(round(stream.average_rate or Fraction(25)))
        return [f.to_ndarray(format="rgb24") for f in inp.decode(stream)], fps


def remux(video_src: Path, audio_src: Path, dst: Path) -> Path:
    """``dst`` with the video packets of ``video_src`` and the audio packets of ``audio_src``.

    Stream copy, so the stream that a shift does not touch keeps its exact bytes.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    with av.open(str(video_src)) as vin, av.open(str(audio_src)) as ain, \
            av.open(str(tmp), "w", format="mp4") as out:
        pairs = [(vin, vin.streams.video[0])] + ([(ain, ain.streams.audio[0])] if ain.streams.audio else [])
        outs = [out.add_stream_from_template(s) for _, s in pairs]
        for (src, s), o in zip(pairs, outs, strict=True):
            for packet in src.demux(s):
                if packet.dts is None:  # the demuxer's end-of-stream flush packet
                    continue
                packet.stream = o
                out.mux(packet)
    tmp.replace(dst)
    return dst


def rewrite_video(src: Path, dst: Path, transform: Callable[[np.ndarray], np.ndarray], crf: int) -> Path:
    """``src`` with every frame passed through ``transform`` (H.264 at ``crf``), audio copied."""
    from veracity.media.encode import write_mp4

    frames, fps = read_frames(src)
    tmp = dst.with_name(dst.stem + ".video.mp4")
    write_mp4(tmp, (transform(f) for f in frames), fps, None, crf=crf)
    try:
        return remux(tmp, src, dst)
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_audio(src: Path, dst: Path, transform: Callable[[np.ndarray, int], np.ndarray],
                  sample_rate: int, audio_bitrate: int) -> Path:
    """``src`` with its audio passed through ``transform`` (AAC), video packets copied."""
    from veracity.media.decode import read_audio
    from veracity.media.encode import write_mp4

    audio = transform(read_audio(src, sample_rate), sample_rate)
    # write_mp4 needs frames to mux audio; only this file's audio stream is kept.
    frames, fps = read_frames(src)
    tmp = dst.with_name(dst.stem + ".audio.mp4")
    write_mp4(tmp, frames, fps, audio, sample_rate, crf=51, audio_bitrate=audio_bitrate, preset="ultrafast")
    try:
        return remux(src, tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ the shifts


def identity(rgb: np.ndarray) -> np.ndarray:
    """The frame unchanged (the ``control`` shift)."""
    return rgb


def relight(rgb: np.ndarray) -> np.ndarray:
    """Gamma 1.6, a left-dark / right-bright side light (0.45 -> 1.35) and tungsten white balance."""
    x = (rgb.astype(np.float32) / 255.0) ** 1.6
    side = np.linspace(0.45, 1.35, rgb.shape[1], dtype=np.float32)[None, :, None]
    x = x * side * np.array([1.12, 1.0, 0.70], dtype=np.float32)
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def cartoon(rgb: np.ndarray) -> np.ndarray:
    """Bilateral-smoothed, posterised (6 levels a channel) frame with dark adaptive-threshold outlines."""
    x = rgb
    for _ in range(2):
        x = cv2.bilateralFilter(x, 7, 60, 7)
    step = 256 // 6
    x = (x // step) * step + step // 2
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 3)
    return np.where(edges[..., None] == 0, 0, x).astype(np.uint8)


def lpc_vocoder(audio: np.ndarray, sr: int, f0: float = 320.0, order: int = 18) -> np.ndarray:
    """The audio's LPC envelope re-excited by a monotone ``f0`` pulse train (voiced) or noise.

    A frame is voiced when its normalised autocorrelation peaks above 0.3 at a lag of
    60-400 Hz. The noise is seeded, so the shift is the same bytes on every run.
    """
    x = np.asarray(audio, dtype=np.float64)
    n_win, hop = int(0.025 * sr), int(0.010 * sr)
    win = np.hanning(n_win)
    period = int(round(sr / f0))
    pulses = np.zeros(len(x) + n_win)
    pulses[::period] = np.sqrt(period)  # unit power, like the noise
    noise = np.random.default_rng(0).standard_normal(len(x) + n_win)
    out = np.zeros(len(x) + n_win)
    norm = np.zeros(len(x) + n_win)
    lo, hi = int(sr / 400), int(sr / 60)
    for start in range(0, len(x), hop):
        seg = x[start:start + n_win]
        if len(seg) < n_win:
            seg = np.pad(seg, (0, n_win - len(seg)))
        frame = seg * win
        ac = np.correlate(frame, frame, "full")[n_win - 1:]
        if ac[0] < 1e-10:
            norm[start:start + n_win] += win
            continue
        ac_reg = ac[: order + 1].copy()
        ac_reg[0] *= 1.0 + 1e-6  # white-noise correction keeps the solve well conditioned
        a = solve_toeplitz(ac_reg[:order], ac_reg[1:order + 1])
        voiced = ac[lo:hi].max() / ac[0] > 0.3
        exc = (pulses if voiced else noise)[start:start + n_win]
        y = signal.lfilter([1.0], np.concatenate([[1.0], -a]), exc)
        rms_in = np.sqrt(np.mean(frame**2))
        rms_out = np.sqrt(np.mean((y * win) ** 2)) + 1e-12
        out[start:start + n_win] += y * (rms_in / rms_out) * win
        norm[start:start + n_win] += win
    y = out[: len(x)] / np.maximum(norm[: len(x)], 1e-3)
    y *= (np.sqrt(np.mean(x**2)) + 1e-12) / (np.sqrt(np.mean(y**2)) + 1e-12)
    return np.clip(y, -0.99, 0.99).astype(np.float32)


def make_shift(name: str, base: Path, work: Path, gen: Any) -> Path:
    """Write shift ``name`` of the corpus at ``base`` under ``work/name`` (clips and manifest)."""
    from veracity.robustness import reencode_video

    root = work / name
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows = _manifest(base)
    t = time.perf_counter()
    for rec in rows:
        src, dst = base / rec["path"], root / rec["path"]
        if name == "heavy_compression":
            reencode_video(src, dst, HEAVY_CRF)
        elif name == "voice":
            rewrite_audio(src, dst, lpc_vocoder, gen.sample_rate, gen.audio_bitrate)
        else:
            transform = {"control": identity, "lighting": relight, "face_style": cartoon}[name]
            rewrite_video(src, dst, transform, gen.crf)
    (root / "manifest.csv").write_text((base / "manifest.csv").read_text())
    print(f"{name}: {len(rows)} clips written ({time.perf_counter() - t:.0f} s)", flush=True)
    return root


def _manifest(root: Path) -> list[dict[str, Any]]:
    import pandas as pd

    return pd.read_csv(root / "manifest.csv").to_dict("records")


# ------------------------------------------------------------------------------ analysis

_ANALYZER: Any = None


def _init_worker(bundle: str, threads: int | None) -> None:
    global _ANALYZER
    import torch

    from veracity.analyzer import Analyzer

    if threads:
        torch.set_num_threads(threads)
    _ANALYZER = Analyzer(bundle, device="cpu")


def _analyse(task: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    """One clip's row; a failure is a row with verdict ERROR, never a stopped run."""
    shift, path, rec = task
    row = {"shift": shift, "video_id": rec["video_id"], "label": int(rec["label"]), "method": rec["method"],
           "identity": rec["identity"]}
    try:
        r = _ANALYZER.analyze(Path(path))
    except Exception as exc:  # noqa: BLE001 - recorded per clip
        return {**row, "verdict": "ERROR", "reason": "error", "probability": None, "ood_score": None,
                "message": f"{type(exc).__name__}: {exc}"[:300], "fired": {}, "ratios": {}, "members": {}}
    ood = r.ood or {}
    person = r.persons[0] if r.persons else {}
    fired = {"members": sorted(k for k, v in (ood.get("members") or {}).items() if v.get("out")),
             "facts_gated": sorted(k for k, v in (ood.get("facts") or {}).items() if v.get("out") and v.get("gated")),
             "facts_notes": sorted(k for k, v in (ood.get("facts") or {}).items()
                                   if v.get("out") and not v.get("gated"))}
    # Every member's and gated fact's ratio (1.0 = its threshold): why a clip was not flagged.
    ratios = {**{k: v.get("ratio") for k, v in (ood.get("members") or {}).items()},
              **{k: v.get("ratio") for k, v in (ood.get("facts") or {}).items() if v.get("gated")}}
    return {**row, "verdict": r.verdict, "reason": r.reason, "probability": r.probability,
            "unreliable_probability": person.get("unreliable_probability"),
            "ood_score": ood.get("ood_score"), "face_px": (ood.get("facts") or {}).get("face_px", {}).get("value"),
            "message": r.message, "fired": fired, "ratios": ratios,
            # kept out of profile too (the report marks them unreliable there): what each member made of the shift
            "members": {k: m["probability"] for k, m in r.members.items()}}


def analyse(tasks: list[tuple[str, str, dict[str, Any]]], bundle: Path, workers: int) -> list[dict[str, Any]]:
    """Every task through an Analyzer on the CPU, in ``workers`` processes (1: in this one)."""
    rows: list[dict[str, Any]] = []

    def show(row: dict[str, Any]) -> None:
        rows.append(row)
        ood = row["ood_score"]
        print(f"[{len(rows):3d}/{len(tasks)}] {row['shift']:17s} {row['video_id']:10s} {row['method']:8s} "
              f"{row['verdict']:8s} {row['reason'] or '':19s} ood={'-' if ood is None else f'{ood:.2f}'}", flush=True)

    if workers <= 1:
        _init_worker(str(bundle), None)
        for task in tasks:
            show(_analyse(task))
        return rows
    threads = max(1, (os.cpu_count() or 1) // workers)  # the cores shared out, not oversubscribed
    # spawn: a forked child would inherit torch's thread pools in an undefined state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(str(bundle), threads)) as pool:
        for row in pool.map(_analyse, tasks, chunksize=2):
            show(row)
    return rows


# ------------------------------------------------------------------------------ summary


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per shift: the OOD-flag share, other abstentions, verdicts, median OOD score, parts fired
    and each part's median ratio (1.0 = its threshold)."""
    out: dict[str, Any] = {}
    for shift in dict.fromkeys(r["shift"] for r in rows):
        rs = [r for r in rows if r["shift"] == shift]
        n = len(rs)
        flagged = [r for r in rs if r["reason"] == OOD]
        other = collections.Counter(r["reason"] for r in rs if r["verdict"] in ("ABSTAIN", "ERROR") and r["reason"] != OOD)
        judged = [r for r in rs if r["reason"] in (None, OOD)]  # the profile ran on these
        scores = [r["ood_score"] for r in rs if r["ood_score"] is not None]
        fired = {part: collections.Counter(k for r in rs for k in r["fired"].get(part, []))
                 for part in ("members", "facts_gated", "facts_notes")}
        by_label = {}
        for side, label in (("authentic", 0), ("generated", 1)):
            sub = [r for r in rs if r["label"] == label]
            by_label[side] = round(sum(r["reason"] == OOD for r in sub) / len(sub), 3) if sub else None
        out[shift] = {
            "n": n,
            "ood_share": round(len(flagged) / n, 3),
            "ood_share_of_judged": round(len(flagged) / len(judged), 3) if judged else None,
            "ood_share_by_label": by_label,
            "other_abstain_share": round(sum(other.values()) / n, 3),
            "other_abstain": dict(sorted(other.items())),
            "verdicts": dict(sorted(collections.Counter(
                r["verdict"] + (f" ({r['reason']})" if r["reason"] else "") for r in rs).items())),
            "median_ood_score": round(statistics.median(scores), 3) if scores else None,
            "median_face_px": round(statistics.median(f for r in rs if (f := r.get("face_px")) is not None), 1)
            if any(r.get("face_px") is not None for r in rs) else None,
            "fired": {part: dict(c.most_common()) for part, c in fired.items()},
            "median_ratio": {part: round(statistics.median(vals), 3)
                             for part in sorted({k for r in rs for k in r["ratios"]})
                             if (vals := [v for r in rs if (v := r["ratios"].get(part)) is not None])},
        }
    return out


def print_table(summary: dict[str, Any]) -> None:
    """One line per shift."""
    print(f"\n{'shift':17s} {'n':>4s} {'OOD':>6s} {'other':>6s} {'med':>5s}  parts fired (clips)")
    for shift, s in summary.items():
        parts = ", ".join(f"{k}:{v}" for part in ("members", "facts_gated", "facts_notes")
                          for k, v in s["fired"][part].items()) or "-"
        med = "-" if s["median_ood_score"] is None else f"{s['median_ood_score']:.2f}"
        print(f"{shift:17s} {s['n']:4d} {s['ood_share']:6.2f} {s['other_abstain_share']:6.2f} {med:>5s}  {parts}")
        if s["other_abstain"]:
            print(f"{'':17s} other: {s['other_abstain']}")


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundle")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--people", type=int, default=8,
                    help="new people, every method each (at least 6 with params' split ratios: "
                         "fakes borrow a second person from the same split)")
    ap.add_argument("--seed", type=int, default=4242, help="corpus seed; not generate.seed nor benchmark.seed")
    ap.add_argument("--hires", type=int, default=256, help="frame side of the hires shift")
    ap.add_argument("--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS))
    ap.add_argument("--work", type=Path, default=REPO / "var" / "ood_shift", help="where the corpora are written")
    ap.add_argument("--workers", type=int, default=1, help="analysis processes, one bundle each")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ood_shift.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import torch

    from veracity.config import load_params

    params = load_params(args.params)
    t0 = time.perf_counter()
    work = args.work / f"seed{args.seed}_people{args.people}"
    corpora = generate_corpora(params, args.seed, args.people, args.hires if "hires" in args.shifts else None, work)
    for name in args.shifts:
        if name != "hires":
            corpora[name] = make_shift(name, corpora[BASE], work, params.generate)
    t_make = time.perf_counter() - t0

    tasks = [(name, str(corpora[name] / rec["path"]), rec)
             for name in [BASE, *args.shifts] for rec in _manifest(corpora[name])]
    t1 = time.perf_counter()
    rows = analyse(tasks, args.bundle, args.workers)
    t_analyse = time.perf_counter() - t1
    summary = summarise(rows)
    result = {
        "bundle": str(args.bundle.resolve()),
        "settings": {"seed": args.seed, "people": args.people, "shifts": [BASE, *args.shifts], "hires": args.hires,
                     "heavy_crf": HEAVY_CRF, "work": str(work), "workers": args.workers,
                     "generate": params.generate.model_dump(mode="json")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "pyav": av.__version__, "opencv": cv2.__version__,
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "seconds": {"make": round(t_make, 1), "analyse": round(t_analyse, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "summary": summary,
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(summary)
    print(f"\nwrote {args.out} ({result['seconds']['total']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
