"""How the bundle does on real footage: ``../shared/realworld/`` (evaluation only).

The folder holds public talking-head clips, authentic and generated, with their sources in
``manifest.csv``. Nothing here is fitted on them: no model, profile or threshold. Each clip
is analysed three times by the same loaded bundle, so the effect of each safeguard is
measured on the same scores:

- ``before``: as bundles judged before they could abstain out of distribution: no
  reference profile, no disagreement rule, a file without usable audio abstains and a
  file without a face too;
- ``without_profile``: the file judged on the evidence there is (video alone when the audio
  is missing or silent, audio alone when there is no face) and the disagreement rule, but
  no reference profile;
- ``shipped``: the bundle as saved (profile, disagreement rule, its evidence rules).

    python bench/realworld.py                          # models/bundle, ../shared/realworld
    python bench/realworld.py --bundle path --data dir --out bench/results/realworld.json

Writes per clip and configuration: verdict, reason, modalities judged, probability, OOD
score and the message; then the verdict distribution for authentic and generated clips per
configuration, and the issue's checks (authentic clips called FAKE, generated called REAL,
abstentions for missing audio alone). Not a test.
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
    from veracity.bundle import Evidence

    manifest = pd.read_csv(args.data / "manifest.csv")
    analyzer = Analyzer(args.bundle, device="cpu")
    b = analyzer.bundle
    shipped = (b.profile, b.disagreement, b.evidence, b.modality_thresholds)
    # Before: no voice judged alone either (a faceless file abstained no_face).
    video_only = {k: v for k, v in b.modality_thresholds.items() if k != "audio"}
    configs = {
        "before": (None, None, Evidence(b.evidence.min_face_ratio, b.evidence.min_duration_s, require_audio=True),
                   video_only),
        "without_profile": (None, b.disagreement, b.evidence, b.modality_thresholds),
        "shipped": shipped,
    }
    rows = []
    t0 = time.perf_counter()
    for rec in manifest.to_dict("records"):
        path = args.data / rec["path"]
        row = {k: rec[k] for k in ("video_id", "label", "method", "seconds", "width", "height", "has_audio")}
        for key, (prof, dis, ev, mod_th) in configs.items():
            b.profile, b.disagreement, b.evidence, b.modality_thresholds = prof, dis, ev, mod_th
            r = analyzer.analyze(path)
            row[key] = {"verdict": r.verdict, "reason": r.reason, "probability": r.probability, "judged": r.judged,
                        "unreliable_probability": (r.persons[0].get("unreliable_probability") if r.persons else None),
                        "ood_score": (r.ood or {}).get("ood_score"), "message": r.message}
        b.profile, b.disagreement, b.evidence, b.modality_thresholds = shipped
        rows.append(row)
        w = row["shipped"]
        print(f"{row['video_id']:28s} {'fake' if row['label'] else 'real':4s} "
              f"{w['verdict']:9s} {w['reason'] or '':20s} judged={','.join(w['judged']) or '-':15s} "
              f"ood={w['ood_score'] if w['ood_score'] is None else round(w['ood_score'], 2)}", flush=True)
    # The checks: no authentic clip FAKE, no generated clip REAL, and no clip with a
    # face abstains for missing audio alone.
    after = [r["shipped"] for r in rows]
    checks = {
        "authentic_called_fake": sum(1 for r in rows if r["label"] == 0 and r["shipped"]["verdict"] == "FAKE"),
        "generated_called_real": sum(1 for r in rows if r["label"] == 1 and r["shipped"]["verdict"] == "REAL"),
        "abstained_for_missing_audio": sum(1 for a in after if a["reason"] in ("no_audio", "silent")),
        "judged_on_video_alone": sum(1 for a in after if a["judged"] == ["video"]),
    }
    result = {
        "bundle": analyzer.identity, "has_profile": shipped[0] is not None, "data": str(args.data),
        "n": len(rows), "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "checks": checks,
        "distribution": {key: _distribution(rows, key) for key in configs},
        "clips": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    for key in configs:
        print(key.replace("_", " ") + ":")
        for side, dist in result["distribution"][key].items():
            print(f"  {side:9s} " + ", ".join(f"{k}: {v}" for k, v in dist.items()))
    print("checks: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
