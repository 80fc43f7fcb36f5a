"""Does the drift monitor flag shifted traffic, and how often does it cry wolf? (no real data)

Streams are simulated by :mod:`monitoring.simulate` (new people from the generator, every
clip through the real Analyzer, logged as the service logs them) and judged by
:func:`monitoring.drift.check` against the bundle's reference, as ``veracity monitor`` does:

* **false alarms**: an unshifted pool of ``--pool-people`` new people (seed
  ``--pool-seed``); ``--windows`` random windows of ``--window`` rows drawn from it (seeded);
  the share flagged is the false-alarm rate (windows overlap: the pool is finite);
* **detection**: the pool's people, one clip each (drawn with a fixed seed), unshifted and
  under each shift of :data:`monitoring.simulate.SHIFTS`, each stream judged as one window;
* optionally ``--realworld DIR``: the clips of a folder (e.g. ``../shared/realworld``,
  evaluation only: nothing is fitted) as one more stream.

    python bench/monitor_drift.py --bundle models/bundle [--params params.yaml]
        [--work var/monitor_drift] [--out bench/results/monitor_drift.json] [--workers 1]

Corpora and stream logs are kept under ``--work`` and reused (``--fresh`` analyses again).
Writes ``--out`` (settings, machine, per-window and per-stream results) and prints a table.
Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages come first

from monitoring.simulate import SHIFTS, analyse_stream, shifted_corpus  # noqa: E402


def stream_log(name: str, corpus: Path, bundle: Path, work: Path, workers: int, fresh: bool,
               per_person: int | None) -> Path:
    """The request log of ``corpus`` analysed by ``bundle`` (reused unless ``fresh``)."""
    log_dir = work / "logs" / name
    done = log_dir / ".done"
    if fresh or not done.exists():
        t = time.perf_counter()
        n = analyse_stream(bundle, corpus, log_dir, workers=workers, per_person=per_person, order_seed=1)
        done.write_text(json.dumps({"rows": n, "seconds": round(time.perf_counter() - t, 1)}))
        print(f"{name}: {n} rows analysed ({time.perf_counter() - t:.0f} s)", flush=True)
    return log_dir


def realworld_corpus(folder: Path, work: Path) -> Path:
    """A manifest over the video files of ``folder`` (read in place; nothing is copied)."""
    import pandas as pd

    out = work / "realworld"
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".mp4", ".mov", ".webm", ".mkv", ".avi"))
    pd.DataFrame({"video_id": [p.stem for p in files], "path": [str(p.resolve()) for p in files],
                  "identity": [p.stem for p in files]}).to_csv(
        out / "manifest.csv", index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundle")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--pool-seed", type=int, default=5151)
    ap.add_argument("--pool-people", type=int, default=60, help="unshifted pool the windows are drawn from")
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--window", type=int, default=60, help="rows per random window")
    ap.add_argument("--shifts", nargs="+", choices=SHIFTS[1:], default=list(SHIFTS[1:]))
    ap.add_argument("--realworld", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=REPO / "var" / "monitor_drift")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--streams-only", action="store_true", help="make the stream logs and stop")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "monitor_drift.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from veracity.config import load_params

    params = load_params(args.params)
    avoid = (params.generate.seed, params.benchmark.seed)
    t0 = time.perf_counter()
    corpora = {shift: shifted_corpus(shift, params.generate, args.pool_seed, args.pool_people, args.work, avoid)
               for shift in ["none", *args.shifts]}
    # The pool: every clip of every person; a stream: one clip of each person.
    logs = {"pool": stream_log("pool", corpora["none"], args.bundle, args.work, args.workers, args.fresh, None)}
    if args.realworld is not None:
        corpora["realworld"] = realworld_corpus(args.realworld, args.work)
    logs |= {name: stream_log(name, c, args.bundle, args.work, args.workers, args.fresh, 1 if name != "realworld"
                              else None) for name, c in corpora.items()}
    t_streams = time.perf_counter() - t0
    if args.streams_only:
        return 0

    from monitoring.drift import Reference, check
    from monitoring.window import read_window

    cfg = params.monitor
    ref = Reference.from_bundle(args.bundle)
    t1 = time.perf_counter()
    pool = read_window(logs["pool"]).rows
    rng = np.random.default_rng(0)
    windows = []
    for i in range(args.windows):
        idx = np.sort(rng.choice(len(pool), size=min(args.window, len(pool)), replace=False))
        res = check(pool.iloc[idx].reset_index(drop=True), ref, cfg)
        windows.append({"window": i, "rows": len(idx), "drift": res.drift, "judged": res.judged,
                        "drifted": res.drifted})
    judged = [w for w in windows if w["judged"]]
    false_alarm = sum(w["drift"] for w in judged) / len(judged) if judged else None
    streams = {}
    for name in [n for n in logs if n != "pool"]:
        res = check(read_window(logs[name]).rows, ref, cfg)
        streams[name] = {"rows": res.n_rows, "judged": res.judged, "drift": res.drift, "drifted": res.drifted,
                         "p_values": res.p_values, "rates": res.rates}
    result = {
        "bundle": str(args.bundle.resolve()),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "monitor": cfg.model_dump(mode="json"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")},
        "seconds": {"streams": round(t_streams, 1), "monitor": round(time.perf_counter() - t1, 1)},
        "pool_rows": len(pool),
        "false_alarm": {"windows": len(windows), "judged": len(judged), "flagged": sum(w["drift"] for w in judged),
                        "rate": false_alarm},
        "windows": windows,
        "streams": streams,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    fa = result["false_alarm"]
    print(f"\nfalse alarms: {fa['flagged']} of {fa['judged']} unshifted windows of {args.window} rows "
          f"(pool {len(pool)} rows)")
    for name, s in streams.items():
        print(f"{name:18s} rows {s['rows']:4d}  {'DRIFT' if s['drift'] else ('ok' if s['judged'] else 'not judged'):10s}"
              f" {', '.join(s['drifted'])}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
