"""The end of a pipeline run in a dozen lines (``veracity summary``, the last step of ``make pipeline``).

Reads what the stages wrote under ``reports/`` (and the manifest) and prints the corpus,
extraction, members, the benchmark's figures with their intervals, the gate's decision
and the champion. ``dvc metrics show`` still prints every figure; this is what a person
reads. A report that is missing is named as missing, never invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from veracity.config import GateConfig

MANIFEST = "data/manifest/manifest.csv"
REPORTS = {
    "validate": "reports/validate/summary.json",
    "extract": "reports/extract/summary.json",
    "ensemble": "reports/ensemble/metrics.json",
    "benchmark": "reports/benchmark/metrics.json",
    "register": "reports/register/summary.json",
}
TRAIN_DIR = "reports/train"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _iv(node: Any, digits: int = 3) -> str:
    """``value [lo, hi]`` of an interval node, or ``n/a``."""
    if not isinstance(node, dict) or node.get("value") is None:
        return "n/a"
    lo, hi = node.get("lo"), node.get("hi")
    f = f"{{:.{digits}f}}"
    if lo is None or hi is None:
        return f.format(node["value"])
    return f"{f.format(node['value'])} [{f.format(lo)}, {f.format(hi)}]"


def benchmark_lines(bench: dict[str, Any], gate: GateConfig) -> list[str]:
    """The benchmark's figures as a few lines, each with its interval and, where one applies, its bar."""
    ens = bench.get("ensemble", {})
    conf = int(round(100 * bench.get("confidence", 0.95)))
    floor = (bench.get("ece_if_calibrated") or {}).get("median")
    th = bench.get("thresholds") or {}
    rng = bench.get("target_fpr_range") or [None, None]
    methods = bench.get("per_method") or {}
    worst = min(methods.items(), key=lambda kv: (kv[1].get("ensemble") or {}).get("value", 1.0), default=None)
    re = bench.get("reencode") or {}
    lines = [
        f"benchmark    {bench.get('n', 0)} clips of {bench.get('n_people', 0)} unseen people ({bench.get('n_real', 0)} "
        f"real), {bench.get('n_abstain', 0)} abstained; {conf}% intervals over people",
        f"  AUC {_iv(ens.get('auc'), 4)} (bar {gate.min_auc})   AP {_iv(ens.get('ap'), 4)}   "
        f"Brier {_iv(ens.get('brier'))}",
        f"  ECE {_iv(ens.get('ece'))} (bar {gate.max_ece}; a perfectly calibrated model shows "
        f"{floor if floor is None else round(floor, 3)} at this size)",
    ]
    if rng[0] is not None:
        lines.append(f"  FPR {_iv(ens.get('fpr'))} at target {th.get('target_fpr')} (a threshold that meets it "
                     f"shows {rng[0]:.3f}-{rng[1]:.3f} on {bench.get('n_real', 0)} reals); TPR {_iv(ens.get('tpr'))}; "
                     f"UNCERTAIN {_iv(ens.get('uncertain_rate'))}")
    if worst is not None:
        lines.append("  AUC per method: " + ", ".join(
            f"{m} {(v.get('ensemble') or {}).get('value', float('nan')):.3f}" for m, v in methods.items())
            + f"; lowest {worst[0]} {_iv(worst[1].get('ensemble'))} (bar {gate.min_method_auc})")
    if re:
        lines.append(f"  re-encoded at CRF {re.get('crf')} ({re.get('n', 0)} clips): AUC drop {_iv(re.get('drop'))} "
                     f"(bar {gate.max_robustness_drop})")
    return lines


def pipeline_summary(root: Path | str, gate: GateConfig) -> str:
    """The summary of the pipeline run whose outputs are under ``root``."""
    root = Path(root)
    r = {k: _read(root / v) for k, v in REPORTS.items()}
    lines = [f"Veracity pipeline summary ({root.resolve()}; every figure: `dvc metrics show`)"]
    try:
        man = pd.read_csv(root / MANIFEST)
        checks = r["validate"]
        passed = f"; manifest checks {checks['passed']}/{checks['evaluated']} passed" if checks else ""
        lines.append(f"corpus       {len(man)} clips ({int((man['label'] == 0).sum())} real) of "
                     f"{man['identity'].nunique()} people{passed}")
    except (OSError, KeyError, ValueError):
        lines.append(f"corpus       no manifest at {MANIFEST}")
    ex = r["extract"]
    if ex:
        status = ", ".join(f"{k} {v}" for k, v in sorted(ex.get("status", {}).items()))
        lines.append(f"extraction   {ex.get('usable')}/{ex.get('clips')} usable ({status}); faces in "
                     f"{100 * ex.get('face_found_ratio', 0):.1f}% of sampled frames")
    else:
        lines.append(f"extraction   missing: {REPORTS['extract']}")
    members = []
    for f in sorted((root / TRAIN_DIR).glob("*.json")):
        d = _read(f) or {}
        if "best_val_auc" in d:
            members.append(f"{f.stem} {d['best_val_auc']:.3f}")
    lines.append("members      validation AUC: " + (", ".join(members) if members else "none trained"))
    ens = (r["ensemble"] or {}).get("ensemble", {}).get("test")
    if ens:
        lines.append(f"test split   ensemble AUC {ens['auc']:.4f}, ECE {ens['ece']:.3f} on {ens['n']} clips "
                     "(held-out people of the training corpus; the gate reads the benchmark)")
    reals = (r["ensemble"] or {}).get("reals")
    if reals:
        fused = reals["rules"]["fused"]
        lines.append(f"thresholds   FAKE at {fused['fake_at']:.3f}, set on {reals['n_judged']} authentic clips of new "
                     f"people ({reals['source']}); validation's cut {fused['fake_at_val']:.3f} left "
                     f"{fused['reals_fpr_at_val_cut']:.3f} of them above it")
    if r["benchmark"]:
        lines += benchmark_lines(r["benchmark"], gate)
    else:
        lines.append(f"benchmark    missing: {REPORTS['benchmark']}")
    reg = r["register"]
    if reg:
        reasons = reg.get("reasons", [])
        failed = [x for x in reasons if x.startswith("FAIL")]
        verdict = "PASS" if reg.get("promoted") else "FAIL"
        detail = f"all {len(reasons)} bars" if not failed else "; ".join(failed)
        lines.append(f"gate         {verdict}: {detail}")
        champ = reg.get("champion_version")
        this = "this run's bundle" if reg.get("promoted") else f"this run's bundle is version {reg.get('version')}, " \
                                                                 "challenger only"
        lines.append(f"champion     {reg.get('model_name')} version {champ} ({this})" if champ else
                     f"champion     none ({this})")
    else:
        lines.append(f"gate         not run: {REPORTS['register']} missing")
    return "\n".join(lines)
