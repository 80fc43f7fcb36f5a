"""The ``register`` stage: the bundle into the MLflow registry, promoted only through the gate.

Logs the verified bundle as an MLflow pyfunc model (the bundle directory is its
artifact), registers a new version with alias ``challenger``, and moves alias
``champion`` to it only when :func:`promotion_gate` passes: the ``gate`` bars judged on
the benchmark's intervals (people no split has seen), and an AUC not clearly below the
current champion's. Writes ``summary.json`` (a DVC metric, without run ids), the model
card and the resolved config.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from veracity.bundle import BUNDLE_JSON, BundleError, verify_bundle
from veracity.config import GateConfig, RegisterConfig, to_plain, write_resolved
from veracity.lineage import sha256_file
from veracity.stages import StageError
from veracity.tracking import start_run

CHAMPION = "champion"
CHALLENGER = "challenger"
# The run metric that holds a version's benchmark AUC (compared with the next candidate's).
CHAMPION_AUC_METRIC = "benchmark_auc"
# Float slack on the gate's boundaries so that, e.g., 0.96 >= 0.97 - 0.01 holds as written.
_EPS = 1e-9

Interval = dict[str, float]  # {"value", "lo", "hi"}


def gate_metrics(benchmark: dict) -> dict[str, Any]:
    """The promotion gate's inputs from the benchmark's ``metrics.json``.

    Returns:
        ``auc``, ``ece``, ``fpr`` (ensemble, on the benchmark) and ``robustness_drop`` (AUC
        lost when re-encoded), each ``{value, lo, hi}`` or None where not measured;
        ``method_auc`` ({method: interval}); ``target_fpr``; ``bundle_sha256``.
    """

    def interval(node: Any) -> Interval | None:
        if not isinstance(node, dict):
            return None
        try:
            out = {k: float(node[k]) for k in ("value", "lo", "hi")}
        except (KeyError, TypeError, ValueError):
            return None
        return out if all(math.isfinite(v) for v in out.values()) else None

    ens = benchmark.get("ensemble") or {}
    per_method = benchmark.get("per_method") or {}
    target = (benchmark.get("thresholds") or {}).get("target_fpr")
    return {
        "auc": interval(ens.get("auc")),
        "ece": interval(ens.get("ece")),
        "fpr": interval(ens.get("fpr")),
        "robustness_drop": interval((benchmark.get("reencode") or {}).get("drop")),
        "method_auc": {m: interval((v or {}).get("ensemble")) for m, v in sorted(per_method.items())},
        "target_fpr": float(target) if isinstance(target, int | float) else None,
        "bundle_sha256": benchmark.get("bundle_sha256"),
    }


def _show(iv: Interval) -> str:
    return f"{iv['value']:.4f} [{iv['lo']:.4f}, {iv['hi']:.4f}]"


def promotion_gate(candidate: dict, champion: dict | None, cfg: RegisterConfig,
                   gate: GateConfig) -> tuple[bool, list[str]]:
    """Decide whether a candidate may replace the champion, from benchmark intervals.

    A bar fails only when the candidate's whole interval is on the wrong side of it (see
    :class:`~veracity.config.GateConfig`): AUC and every method's AUC fail when the upper
    end is below ``gate.min_auc`` / ``gate.min_method_auc`` (and below the champion's AUC
    minus ``cfg.auc_margin``); ECE, FPR and the re-encode drop fail when the lower end is
    above ``gate.max_ece``, the bundle's target FPR and ``gate.max_robustness_drop``. A
    figure that was not measured fails its bar.

    Args:
        candidate: what :func:`gate_metrics` returns for the new bundle.
        champion: ``{"auc": float | None}`` of the current champion, or None when there is none.
        cfg: a :class:`veracity.config.RegisterConfig` (the AUC margin).
        gate: a :class:`veracity.config.GateConfig` (the bars).

    Returns:
        ``(passed, reasons)``: one sentence per bar, passing ones included, with figures.
    """
    reasons: list[str] = []
    ok = True

    def check(name: str, iv: Interval | None, bar: float | None, higher_is_better: bool, what: str) -> None:
        nonlocal ok
        if iv is None or bar is None:
            ok = False
            reasons.append(f"FAIL {name}: not measured by the benchmark (needs {what})")
            return
        passed = iv["hi"] >= bar - _EPS if higher_is_better else iv["lo"] <= bar + _EPS
        ok &= passed
        end = "upper" if higher_is_better else "lower"
        rel = (">=" if passed else "<") if higher_is_better else ("<=" if passed else ">")
        reasons.append(f"{'PASS' if passed else 'FAIL'} {name}: {_show(iv)}, {end} end {rel} {what} {bar:.4f}")

    auc = candidate.get("auc")
    check("auc", auc, gate.min_auc, True, "gate.min_auc")
    champ_auc = None if champion is None else champion.get("auc")
    if champion is None:
        reasons.append("PASS champion: none to compare with")
    elif champ_auc is None:
        reasons.append("PASS champion: the champion has no benchmark AUC on record (not compared)")
    else:
        check("auc vs champion", auc, champ_auc - cfg.auc_margin, True,
              f"champion {champ_auc:.4f} - register.auc_margin {cfg.auc_margin:g} =")
    methods = candidate.get("method_auc") or {}
    if not methods:
        check("method auc", None, gate.min_method_auc, True, "gate.min_method_auc")
    for method, iv in methods.items():
        check(f"auc on {method}", iv, gate.min_method_auc, True, "gate.min_method_auc")
    check("ece", candidate.get("ece"), gate.max_ece, False, "gate.max_ece")
    check("fpr", candidate.get("fpr"), candidate.get("target_fpr"), False, "the bundle's target FPR")
    check("robustness_drop", candidate.get("robustness_drop"), gate.max_robustness_drop, False,
          "gate.max_robustness_drop")
    return bool(ok), reasons


def _metric_key(text: str) -> str:
    """A method name as an MLflow metric key (letters, digits, ``_-. /`` only)."""
    return re.sub(r"[^\w\-. /]", "_", str(text))


def _benchmark_metrics(benchmark: dict) -> dict[str, float]:
    """The benchmark's figures as flat MLflow metrics: ``benchmark_<figure>[_lo|_hi]``."""
    out: dict[str, float] = {}

    def put(key: str, iv: Any) -> None:
        if isinstance(iv, dict):
            for part, suffix in (("value", ""), ("lo", "_lo"), ("hi", "_hi")):
                v = iv.get(part)
                if isinstance(v, int | float) and math.isfinite(v):
                    out[_metric_key(f"benchmark_{key}{suffix}")] = float(v)

    for k, iv in (benchmark.get("ensemble") or {}).items():
        if k == "without_profile":
            for fig, v in (iv or {}).items():
                put(f"without_profile.{fig}", v)
        else:
            put(k, iv)
    for mod, node in (benchmark.get("alone") or {}).items():
        for fig, iv in (node or {}).items():
            put(f"alone.{mod}.{fig}", iv)
    for m, node in (benchmark.get("members") or {}).items():
        put(f"{m}.auc", (node or {}).get("auc"))
    for method, node in (benchmark.get("per_method") or {}).items():
        for who, iv in (node or {}).items():
            put(f"auc.{method}.{who}", iv)
    put("reencode_drop", (benchmark.get("reencode") or {}).get("drop"))
    return out


def register_bundle(bundle_dir: Path, benchmark: dict, cfg: RegisterConfig, gate: GateConfig, root: Path,
                    card_out: Path | None = None) -> dict:
    """Register a verified bundle as a new model version and promote it if it passes the gate.

    Verifies every checksum, logs the bundle as an MLflow pyfunc model (the bundle directory
    is its artifact) with the gate metrics and the model card, registers a new version of
    ``cfg.model_name`` with alias ``challenger``, compares it with the version behind alias
    ``champion`` (metrics of that version's run) and moves ``champion`` to it only if
    :func:`promotion_gate` passes. The version is tagged with the gate's result and reasons.

    Args:
        bundle_dir: the bundle directory (``bundle.json`` + weights).
        benchmark: the benchmark's ``metrics.json`` for this bundle.
        cfg: a :class:`veracity.config.RegisterConfig`.
        gate: a :class:`veracity.config.GateConfig`.
        root: project root (the MLflow store is ``root/mlflow.db`` unless MLFLOW_TRACKING_URI).
        card_out: also write the model card here.

    Returns:
        ``model_name, version, run_id, promoted, champion_version, previous_champion_version,
        reasons, candidate, champion`` (the last two are gate metrics; champion None if none).

    Raises:
        veracity.bundle.BundleError: a file is missing, extra or its sha256 differs, or the
            benchmark measured another bundle.
    """
    bundle_dir = Path(bundle_dir)
    bundle = verify_bundle(bundle_dir)
    candidate = gate_metrics(benchmark)
    digest = sha256_file(bundle_dir / BUNDLE_JSON)
    if candidate["bundle_sha256"] != digest:
        raise BundleError(f"the benchmark measured bundle {candidate['bundle_sha256']}, not {bundle_dir} ({digest}): "
                          "run `veracity benchmark` on this bundle first")

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from veracity.mlflow_model import CODE_PATH, signature
    from veracity.modelcard import model_card

    name = cfg.model_name
    with start_run(f"register-{name}", root, tags={"stage": "register", "bundle_sha256": digest}) as tracker:
        tracker.log_params({"register": to_plain(cfg), "gate": to_plain(gate), "fusion_rule": (bundle.get("fusion") or {}).get("rule"),
                            "thresholds": bundle.get("thresholds") or {},
                            "members": [m.get("name") for m in bundle.get("members") or [] if isinstance(m, dict)]})
        tracker.log_metrics(_benchmark_metrics(benchmark))
        test = ((bundle.get("metrics") or {}).get("ensemble") or {}).get("test") or {}
        tracker.log_metrics({f"test_{k}": v for k, v in test.items() if isinstance(v, int | float)})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(CODE_PATH),  # models from code: the registry holds no pickle
            artifacts={"bundle": str(bundle_dir)},
            signature=signature(),
            input_example=pd.DataFrame({"path": ["clip.mp4"]}),
            # Explicit requirements: MLflow would otherwise import the model to infer them.
            pip_requirements=["veracity"],
        )
        client = MlflowClient()
        version = str(mlflow.register_model(info.model_uri, name, tags={"bundle_sha256": digest}).version)
        client.set_registered_model_alias(name, CHALLENGER, version)

        previous, champion = None, None
        try:
            prev = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            prev = None
        if prev is not None:
            previous = str(prev.version)
            run_metrics = client.get_run(prev.run_id).data.metrics if prev.run_id else {}
            champion = {"auc": run_metrics.get(CHAMPION_AUC_METRIC)}

        passed, reasons = promotion_gate(candidate, champion, cfg, gate)
        if passed:
            client.set_registered_model_alias(name, CHAMPION, version)
        current = version if passed else previous
        client.set_model_version_tag(name, version, "gate", "passed" if passed else "failed")
        client.set_model_version_tag(name, version, "gate_reasons", "\n".join(reasons))
        mlflow.set_tags({"model_name": name, "model_version": version, "promoted": str(passed).lower()})

        result = {
            "model_name": name,
            "version": version,
            "run_id": tracker.run_id,
            "promoted": passed,
            "champion_version": current,
            "previous_champion_version": previous,
            "reasons": reasons,
            "candidate": candidate,
            "champion": champion,
        }
        card = model_card(bundle, extra={**result, "model_name": name, "benchmark": benchmark})
        mlflow.log_text(card, "model_card.md")
        tracker.log_dict(result, "register/summary.json")
    if card_out is not None:
        Path(card_out).parent.mkdir(parents=True, exist_ok=True)
        Path(card_out).write_text(card)
    return result


def register(cfg: RegisterConfig, gate: GateConfig, bundle: Path, benchmark: Path, out: Path, *,
             root: Path) -> dict[str, Any]:
    """Register ``bundle`` (alias ``challenger``) and promote it to ``champion`` if it passes the gate.

    Args:
        cfg: the ``register`` section (model name, AUC margin against the champion).
        gate: the quality bars a champion must meet (``gate`` section).
        bundle: the bundle directory written by the ensemble stage.
        benchmark: the benchmark stage's ``metrics.json`` for this bundle.
        out: directory for ``summary.json``, ``model_card.md`` and the resolved config.
        root: repository root (the MLflow store is ``root/mlflow.db`` unless
            ``MLFLOW_TRACKING_URI`` is set).

    Returns:
        What :func:`register_bundle` returns (``run_id`` included).

    Raises:
        BundleError: no bundle at ``bundle``, a file that does not match its checksum, or a
            benchmark of another bundle.
        StageError: no benchmark at ``benchmark``.
    """
    bundle, benchmark, out = Path(bundle), Path(benchmark), Path(out)
    if not (bundle / BUNDLE_JSON).is_file():
        raise BundleError(f"{bundle} holds no {BUNDLE_JSON} (run `veracity ensemble` first)")
    if not benchmark.is_file():
        raise StageError(f"{benchmark} does not exist (run `veracity benchmark` first): the gate judges the "
                         "benchmark")
    out.mkdir(parents=True, exist_ok=True)
    res = register_bundle(bundle, json.loads(benchmark.read_text()), cfg, gate, root, card_out=out / "model_card.md")
    # summary.json is a DVC metric: run ids (new on every run) stay in MLflow and the model card.
    summary = {k: v for k, v in res.items() if k != "run_id"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    write_resolved(cfg, out)
    return res
