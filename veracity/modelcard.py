"""The model card of a bundle: a Markdown page written from ``bundle.json`` alone.

``veracity register`` attaches it to the MLflow run and writes it next to the registration
summary. Every figure comes from the bundle (metrics, thresholds, robustness, lineage), so
the card describes exactly what is registered; a field the bundle lacks shows as ``n/a``.
The layout follows Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

NA = "n/a"


def _get(tree: Any, *keys: Any, default: Any = None) -> Any:
    """``tree[k1][k2]...`` or ``default`` when any level is missing or not a mapping."""
    node = tree
    for key in keys:
        if isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return default
    return default if node is None else node


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return NA
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return NA if math.isnan(value) else f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v, digits) for v in value) if value else NA
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v, digits)}" for k, v in value.items()) if value else NA
    return str(value)


def _cell(value: Any) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    rows = list(rows)
    if not rows:
        rows = [[NA] * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _pooling(p: Any) -> str:
    if not isinstance(p, dict):
        return _fmt(p)
    how = p.get("how", NA)
    rest = {k: v for k, v in p.items() if k != "how"}
    return f"{how} ({_fmt(rest)})" if rest else str(how)


def _calibrator(c: Any) -> str:
    if not isinstance(c, dict):
        return _fmt(c)
    method = c.get("method") or NA
    if method == "temperature" and c.get("temperature") is not None:
        return f"temperature (T={_fmt(c['temperature'], 3)})"
    if method == "platt" and isinstance(c.get("platt"), dict):
        return f"Platt (a={_fmt(c['platt'].get('slope'), 3)}, b={_fmt(c['platt'].get('bias'), 3)})"
    if method == "isotonic":
        knots = len(_get(c, "isotonic", "x", default=[]) or [])
        return f"isotonic ({knots} knots)" if knots else "isotonic"
    return str(method)


def _auc(value: Any) -> Any:
    """A per-method entry is either ``{"auc": x, ...}`` or the AUC itself."""
    return value.get("auc") if isinstance(value, dict) else value


def _members(bundle: dict) -> list[dict]:
    members = bundle.get("members") if isinstance(bundle, dict) else None
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _interval(node: Any) -> str:
    if not isinstance(node, dict) or not isinstance(node.get("value"), int | float):
        return NA
    lo, hi = node.get("lo"), node.get("hi")
    shown = _fmt(node["value"])
    return f"{shown} [{_fmt(lo)}, {_fmt(hi)}]" if isinstance(lo, int | float) and isinstance(hi, int | float) else shown


def _benchmark(bench: dict) -> list[str]:
    """The benchmark section: figures on people no split has seen, with their intervals."""
    ens = _get(bench, "ensemble", default={})
    conf = _get(bench, "confidence", default=0.95)
    out = ["## Benchmark: people no split has seen", "",
           f"- {_fmt(_get(bench, 'n'))} clips of {_fmt(_get(bench, 'n_people'))} people generated apart from the "
           f"training corpus ({_fmt(_get(bench, 'n_real'))} real), every method for every person, analysed through "
           f"the served path. Intervals: {_fmt(100 * conf if isinstance(conf, int | float) else None)}%, "
           "resampling people.", ""]
    keys = ("auc", "ap", "ece", "brier", "fpr", "tpr", "uncertain_rate", "abstain_rate", "ood_rate",
            "disagreement_rate")
    out += _table(["figure", "value [interval]"], [[k, _interval(_get(ens, k))] for k in keys])
    out.append("")
    without = _get(ens, "without_profile", default={})
    if isinstance(without, dict) and without:
        out.append(f"- Without the reference profile (out-of-profile clips scored anyway): AUC "
                   f"{_interval(without.get('auc'))}, ECE {_interval(without.get('ece'))}.")
        out.append("")
    alone = _get(bench, "alone", default={})
    if isinstance(alone, dict) and alone:
        out.append("Each modality judged alone (as a file without the other is judged), against its own target:")
        out.append("")
        keys = ("auc", "ece", "fpr", "tpr", "uncertain_rate", "abstain_rate", "ood_rate")
        mods = sorted(alone)
        out += _table(["figure", *mods], [[k, *(_interval(_get(alone, m, k)) for m in mods)] for k in keys])
        out.append("")
    per_method = _get(bench, "per_method", default={})
    if isinstance(per_method, dict) and per_method:
        who = sorted({w for v in per_method.values() if isinstance(v, dict) for w in v})
        who = ["ensemble", *[w for w in who if w != "ensemble"]]
        out += _table(["method", *who], [[m, *(_interval(_get(v, w)) for w in who)] for m, v in sorted(per_method.items())])
        out.append("")
    re = _get(bench, "reencode", default={})
    if isinstance(re, dict) and re:
        out.append(f"- Re-encoded at CRF {_fmt(re.get('crf'))} ({_fmt(re.get('n'))} clips): ensemble AUC drop "
                   f"{_interval(re.get('drop'))}.")
        out.append("")
    return out


def _scope(bundle: dict) -> str:
    """The reference profile's scope in words (what the bundle abstains on)."""
    prof = _get(bundle, "profile", default=None)
    if not isinstance(prof, dict):
        return ("- Scope: this bundle has no reference profile, so it cannot say when an input is "
                "unlike its training data; treat verdicts on other footage as unreliable.")
    bands = prof.get("bands") or {}
    gated = [f for f in prof.get("gate_facts") or [] if f in bands]
    shown = ", ".join(f"{f.replace('_', ' ')} {_fmt(bands[f][0], 3)} to {_fmt(bands[f][1], 3)}" for f in gated)
    rate = prof.get("target_rate")
    return (f"- Scope: profiled on {_fmt(prof.get('n_fit'))} clips of the "
            f"{', '.join(prof.get('fit_splits') or [])} split; abstains (out_of_distribution) on a person "
            f"whose member embeddings ({prof.get('method')} distance) or media facts fall outside that "
            f"profile (in-profile bands: {shown or NA}); its threshold flags "
            f"{_fmt(100 * rate, 3) + '%' if isinstance(rate, int | float) else NA} of held-out "
            f"{prof.get('threshold_split')} people.")


def _cuts_on(metrics: Any) -> str:
    """Where the FAKE cuts and the UNCERTAIN band were set, in a sentence."""
    reals = _get(metrics, "reals", default=None)
    fused = _get(reals, "rules", "fused", default=None)
    if not isinstance(fused, dict):
        return "thresholds are chosen on the validation split."
    who = ("authentic clips of people no split has seen" if _get(reals, "source") == "synthetic"
           else f"authentic clips of `{_get(reals, 'folder')}`")
    return (f"each FAKE cut is set on {_fmt(_get(reals, 'n_judged'))} {who}, at the target false-positive "
            f"rate ({_fmt(fused.get('reals_fpr'), 3)} of them at or above the fused cut), and the UNCERTAIN "
            "band on validation.")


def model_card(bundle: dict, extra: dict | None = None) -> str:
    """Render the model card of a bundle.

    Args:
        bundle: the parsed ``bundle.json``; any field may be missing.
        extra: registration facts to show on top (``model_name``, ``version``, ``run_id``,
            ``promoted``, ``champion_version``, ``reasons``), an optional ``title``, and the
            benchmark's ``metrics.json`` as ``benchmark``.

    Returns:
        The card as Markdown (ends with a newline).
    """
    bundle = bundle if isinstance(bundle, dict) else {}
    extra = extra or {}
    metrics = _get(bundle, "metrics", default={})
    ens_test = _get(metrics, "ensemble", "test", default={})
    members = _members(bundle)
    title = extra.get("title") or f"Model card: {extra.get('model_name') or 'veracity-detector'}"
    out: list[str] = [f"# {title}", ""]
    out.append(
        "Multimodal deepfake video detector: an ensemble of face, motion and voice members whose "
        "calibrated scores are fused into one probability and a verdict FAKE, UNCERTAIN, REAL or "
        "ABSTAIN."
    )
    out.append("")

    if any(k in extra for k in ("model_name", "version", "run_id", "promoted", "reasons")):
        out += ["## Registration", ""]
        promoted = extra.get("promoted")
        status = NA if promoted is None else ("champion" if promoted else "challenger (gate failed)")
        out += [
            f"- Registered model: {_fmt(extra.get('model_name'))}, version {_fmt(extra.get('version'))}",
            f"- Status: {status}; champion version {_fmt(extra.get('champion_version'))}",
            f"- MLflow run: {_fmt(extra.get('run_id'))}",
        ]
        reasons = extra.get("reasons") or []
        if reasons:
            out.append("- Promotion gate:")
            out += [f"  - {r}" for r in reasons]
        out.append("")

    source = _get(bundle, "data", "source", default=_get(bundle, "contract", "source"))
    out += [
        "## Intended use and limits",
        "",
        "- Use: flag video files (face on screen, speech on the track) whose face, motion or voice "
        "looks manipulated, as a triage aid for a human reviewer.",
        "- Training data: "
        + (
            f"`{source}` corpus." if source and source != "synthetic"
            else "by default the project's procedural synthetic audio-visual corpus (face swap, "
            "reenactment, lip-sync, cloned and vocoded voices). Figures below describe that corpus; "
            "accuracy on real footage is unknown until the model is evaluated on a real dataset."
        ),
        "- Probabilities are calibrated on the validation split; " + _cuts_on(metrics)
        + " The figures are measured on the held-out test split, whose identities appear in no other split.",
        ("- A file without enough face evidence is ABSTAIN (with a reason), never REAL. "
         + ("A file without usable audio is judged on video alone, against video-only thresholds set "
            "the same way; the report says which modalities were judged."
            if not _get(bundle, "evidence", "require_audio", default=True) and "video" in (
                _get(bundle, "modality_thresholds", default={}) or {})
            else "A file without usable audio is ABSTAIN.")),
        _scope(bundle),
        "- Not for: sole evidence in legal, journalistic or identity decisions; manipulation "
        "families absent from training; still images.",
        "",
    ]

    out += ["## Data", ""]
    splits = _get(bundle, "data", "clips_by_split", default=None)
    if isinstance(splits, dict) and splits:
        out += _table(["split", "clips"], [[k, v] for k, v in splits.items()])
    else:
        out.append(f"- Split sizes: {NA}")
    out.append("")
    out.append(f"- Test clips scored by the ensemble: {_fmt(_get(ens_test, 'n'))}")
    out.append(f"- Raw corpus (DVC md5): {_fmt(_get(bundle, 'lineage', 'data_dvc_md5'))}")
    contract = _get(bundle, "contract", default={})
    if isinstance(contract, dict) and contract:
        keys = [k for k in ("fps", "frames_per_window", "face_size", "sample_rate", "audio_seconds") if k in contract]
        shown = {k: contract[k] for k in keys} if keys else contract
        out.append(f"- Data contract: {_fmt(shown)}")
    else:
        out.append(f"- Data contract: {NA}")
    out.append("")

    out += ["## Members", ""]
    rows = []
    for m in members:
        name = m.get("name")
        mtest = _get(metrics, "members", name, "test", default={})
        rows.append([
            name, m.get("detector"), m.get("modality"), m.get("target"), _pooling(m.get("pooling")),
            _calibrator(m.get("calibrator")), _get(mtest, "auc"), _get(mtest, "ece_before"),
            _get(mtest, "ece_after", default=_get(mtest, "ece")),
        ])
    out += _table(
        ["member", "detector", "modality", "target", "pooling", "calibrator", "test AUC", "ECE before", "ECE after"],
        rows,
    )
    out.append("")

    fusion = _get(bundle, "fusion", default={})
    th = _get(bundle, "thresholds", default={})
    out += ["## Fusion and thresholds", ""]
    out.append(f"- Fusion rule: {_fmt(_get(fusion, 'rule'))} over {_fmt(_get(fusion, 'members'))}")
    out.append(
        f"- Verdict: REAL below {_fmt(_get(th, 'real_below'))}, FAKE at or above {_fmt(_get(th, 'fake_at'))}, "
        "UNCERTAIN in between (ABSTAIN when evidence is missing)."
    )
    dis = _get(bundle, "disagreement", default=None)
    if isinstance(dis, dict) and dis:
        out.append(f"- Member disagreement: UNCERTAIN when the members split (one at or above 0.5, one below) "
                   f"and their log-odds pattern lies farther than {_fmt(dis.get('bound'), 3)} from its "
                   f"{_fmt(dis.get('k'))}-th nearest validation pattern (a bound validation clips exceed at a "
                   f"rate of {_fmt(dis.get('rate'))}).")
    fallbacks = _get(bundle, "fallbacks", default=None)
    if isinstance(fallbacks, list) and fallbacks:
        out.append(f"- A member that times out or fails leaves the call to the others: {len(fallbacks)} smaller "
                   "member sets have a fusion and thresholds of their own, set the same way with the same "
                   "targets; a report names the members that gave no answer.")
    out.append("")
    out += _table(
        ["", "target", "validation"],
        [
            ["false-positive rate (REAL called FAKE)", _get(th, "target_fpr"), _get(th, "val_fpr")],
            ["uncertain rate", _get(th, "target_uncertain"), _get(th, "val_uncertain")],
        ],
    )
    out.append("")

    out += ["## Held-out performance (test split)", ""]
    out += _table(
        ["AUC", "ECE", "Brier", "FPR", "uncertain rate", "clips"],
        [[_get(ens_test, k) for k in ("auc", "ece", "brier", "fpr", "uncertain_rate", "n")]],
    )
    out.append("")

    bench = extra.get("benchmark")
    if isinstance(bench, dict):
        out += _benchmark(bench)

    out += ["## AUC per manipulation method (test split)", ""]
    per_method = _get(metrics, "ensemble", "per_method", default={})
    out += _table(
        ["method", "AUC"],
        [[k, _auc(v)] for k, v in sorted(per_method.items())] if isinstance(per_method, dict) else [],
    )
    out.append("")

    out += ["## Calibration", ""]
    out.append(
        f"- Ensemble on test: ECE {_fmt(_get(ens_test, 'ece'))}, Brier {_fmt(_get(ens_test, 'brier'))}. "
        "Each member's calibrator was fitted on validation scores only."
    )
    if _get(ens_test, "ece_if_calibrated_median", default=None) is not None:
        out.append(
            f"- A perfectly calibrated model with the same test probabilities would show ECE "
            f"{_fmt(_get(ens_test, 'ece_if_calibrated_median'))} (median over label draws; 90th percentile "
            f"{_fmt(_get(ens_test, 'ece_if_calibrated_p90'))}) on {_fmt(_get(ens_test, 'n'))} clips: an ECE "
            "in that range is sampling noise, not miscalibration."
        )
    for m in members:
        mtest = _get(metrics, "members", m.get("name"), "test", default={})
        out.append(
            f"- {_fmt(m.get('name'))}: {_calibrator(m.get('calibrator'))}; ECE {_fmt(_get(mtest, 'ece_before'))} "
            f"before, {_fmt(_get(mtest, 'ece_after', default=_get(mtest, 'ece')))} after"
        )
    out.append("")

    gate = _get(bundle, "robustness", "gate", default={})
    worst = _get(bundle, "robustness", "worst", default={})
    out += ["## Robustness", ""]
    out += _table(
        ["", "corruption", "strength", "clean AUC", "AUC", "AUC drop"],
        [
            ["gate", _get(gate, "corruption"), _get(gate, "strength"), _get(gate, "clean_auc"), _get(gate, "auc"),
             _get(gate, "drop")],
            ["worst", _get(worst, "corruption"), _get(worst, "strength"), _get(worst, "clean_auc"),
             _get(worst, "auc"), _get(worst, "drop")],
        ],
    )
    out.append("")

    lineage = _get(bundle, "lineage", default={})
    out += ["## Lineage", ""]
    out.append(f"- Git commit: {_fmt(_get(lineage, 'git_commit'))}")
    out.append(f"- Raw corpus (data.dvc md5): {_fmt(_get(lineage, 'data_dvc_md5'))}")
    out.append(f"- Bundle format: {_fmt(bundle.get('format'))} v{_fmt(bundle.get('version'))}")
    out.append("")
    stages = _get(lineage, "dvc_lock", default={})
    out += _table(["DVC stage", "md5"], sorted(stages.items()) if isinstance(stages, dict) else [])
    out.append("")
    runs = _get(lineage, "mlflow_runs", default={})
    out += _table(["MLflow run of", "run id"], sorted(runs.items()) if isinstance(runs, dict) else [])
    out.append("")
    return "\n".join(out)
