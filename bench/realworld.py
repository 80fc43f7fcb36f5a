"""How the bundle does on real footage: ``../shared/realworld/`` (evaluation only).

The folder holds public talking-head clips, authentic and generated, with their sources in
``manifest.csv``. Nothing here is fitted on them: no model, profile or threshold. Each clip
is analysed twice by the same loaded bundle, with its reference profile and without it
(the bundle as it was before the out-of-distribution check), so the effect of the profile
is measured on the same scores.

    python bench/realworld.py                          # models/bundle, ../shared/realworld
    python bench/realworld.py --bundle path --data dir --out bench/results/realworld.json

Writes per clip: label, method, verdict, reason, probability, OOD score and the message;
then the verdict distribution for authentic and generated clips, with and without the
profile. Not a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _distribution(rows: list[dict], key: str) -> dict[str, dict[str, int]]:
    out: dict[str, collections.Counter] = {"authentic": collections.Counter(), "generated": collections.Counter()}
    for r in rows:
        side = "authentic" if r["label"] == 0 else "generated"
        v = r[key]
        out[side][v["verdict"] + (f" ({v['reason']})" if v["reason"] else "")] += 1
    return {k: dict(sorted(c.items())) for k, c in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "models" / "bundle")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "realworld")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "realworld.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import pandas as pd

    from veracity.analyzer import Analyzer

    manifest = pd.read_csv(args.data / "manifest.csv")
    analyzer = Analyzer(args.bundle, device="cpu")
    profile = analyzer.bundle.profile
    rows = []
    t0 = time.perf_counter()
    for rec in manifest.to_dict("records"):
        path = args.data / rec["path"]
        row = {k: rec[k] for k in ("video_id", "label", "method", "seconds", "width", "height", "has_audio")}
        for key, prof in (("with_profile", profile), ("without_profile", None)):
            analyzer.bundle.profile = prof
            r = analyzer.analyze(path)
            row[key] = {"verdict": r.verdict, "reason": r.reason,
                        "probability": r.probability,
                        "unreliable_probability": (r.persons[0].get("unreliable_probability") if r.persons else None),
                        "ood_score": (r.ood or {}).get("ood_score"), "message": r.message}
        analyzer.bundle.profile = profile
        rows.append(row)
        w = row["with_profile"]
        print(f"{row['video_id']:28s} {'fake' if row['label'] else 'real':4s} "
              f"{w['verdict']:9s} {w['reason'] or '':20s} ood={w['ood_score'] if w['ood_score'] is None else round(w['ood_score'], 2)}",
              flush=True)
    result = {
        "bundle": analyzer.identity, "has_profile": profile is not None, "data": str(args.data),
        "n": len(rows), "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "distribution": {"with_profile": _distribution(rows, "with_profile"),
                         "without_profile": _distribution(rows, "without_profile")},
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for key in ("without_profile", "with_profile"):
        print(key.replace("_", " ") + ":")
        for side, dist in result["distribution"][key].items():
            print(f"  {side:9s} " + ", ".join(f"{k}: {v}" for k, v in dist.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
