"""The ``register`` stage: the bundle into the MLflow registry, promoted only through the gate.

Logs the verified bundle as an MLflow pyfunc model (the bundle directory is its
artifact), registers a new version with alias ``challenger``, and moves alias
``champion`` to it only when :func:`promotion_gate` passes (``gate`` bounds, and an AUC
not below the current champion's). Writes ``summary.json`` (a DVC metric, without run
ids), the model card and the resolved config.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from veracity.bundle import BUNDLE_JSON, BundleError, verify_bundle
from veracity.config import GateConfig, RegisterConfig, to_plain, write_resolved
from veracity.lineage import sha256_file
from veracity.tracking import start_run

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_METRICS = {"auc": "test_auc", "ece": "test_ece", "robustness_drop": "robustness_drop"}
# Float slack on the gate's boundaries so that, e.g., 0.96 >= 0.97 - 0.01 holds as written.
_EPS = 1e-9


def gate_metrics(bundle: dict) -> dict[str, float | None]:
    """The promotion gate's inputs from a parsed ``bundle.json``.

    Returns:
        ``auc`` and ``ece`` of the ensemble on the test split and ``robustness_drop`` (the AUC
        lost under the gate corruption); None where the bundle does not say.
    """

    def num(*keys: str) -> float | None:
        node: Any = bundle
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None

    return {
        "auc": num("metrics", "ensemble", "test", "auc"),
        "ece": num("metrics", "ensemble", "test", "ece"),
        "robustness_drop": num("robustness", "gate", "drop"),
    }


def promotion_gate(candidate: dict, champion: dict | None, cfg: RegisterConfig,
                   gate: GateConfig) -> tuple[bool, list[str]]:
    """Decide whether a candidate may replace the champion.

    The candidate passes iff (there is no champion, or its AUC >= the champion's AUC minus
    ``cfg.auc_margin``) and its ECE <= ``gate.max_ece`` and its robustness drop <=
    ``gate.max_robustness_drop``. A candidate metric that is missing fails its check; a
    champion without an AUC on record is not compared.

    Args:
        candidate: ``auc``, ``ece``, ``robustness_drop`` of the new bundle.
        champion: the same for the current champion, or None when there is none.
        cfg: a :class:`veracity.config.RegisterConfig` (the AUC margin).
        gate: a :class:`veracity.config.GateConfig` (the bounds every bundle must meet).

    Returns:
        ``(passed, reasons)``: one sentence per check, passing ones included, with figures.
    """
    reasons: list[str] = []
    ok = True

    def verdict(passed: bool) -> str:
        return "PASS" if passed else "FAIL"

    auc = candidate.get("auc")
    champ_auc = None if champion is None else champion.get("auc")
    if auc is None:
        ok = False
        reasons.append("FAIL auc: the candidate has no test AUC")
    elif champion is None:
        reasons.append(f"PASS auc: {auc:.4f}, no champion to compare with")
    elif champ_auc is None:
        reasons.append(f"PASS auc: {auc:.4f}, the champion has no AUC on record (not compared)")
    else:
        bound = champ_auc - cfg.auc_margin
        passed = auc >= bound - _EPS
        ok &= passed
        rel = ">=" if passed else "<"
        reasons.append(f"{verdict(passed)} auc: {auc:.4f} {rel} champion {champ_auc:.4f} - margin "
                       f"{cfg.auc_margin:.4f} = {bound:.4f}")

    for key, limit, name in (("ece", gate.max_ece, "max_ece"),
                             ("robustness_drop", gate.max_robustness_drop, "max_robustness_drop")):
        value = candidate.get(key)
        if value is None:
            ok = False
            reasons.append(f"FAIL {key}: the candidate has no {key} (needs <= {limit:.4f})")
            continue
        passed = value <= limit + _EPS
        ok &= passed
        reasons.append(f"{verdict(passed)} {key}: {value:.4f} {'<=' if passed else '>'} {name} {limit:.4f}")
    return bool(ok), reasons


def _metric_key(text: str) -> str:
    """A method name as an MLflow metric key (letters, digits, ``_-. /`` only)."""
    return re.sub(r"[^\w\-. /]", "_", str(text))


def register_bundle(bundle_dir: Path, cfg: RegisterConfig, gate: GateConfig, root: Path,
                    card_out: Path | None = None) -> dict:
    """Register a verified bundle as a new model version and promote it if it passes the gate.

    Verifies every checksum, logs the bundle as an MLflow pyfunc model (the bundle directory
    is its artifact) with the gate metrics and the model card, registers a new version of
    ``cfg.model_name`` with alias ``challenger``, compares it with the version behind alias
    ``champion`` (metrics of that version's run) and moves ``champion`` to it only if
    :func:`promotion_gate` passes. The version is tagged with the gate's result and reasons.

    Args:
        bundle_dir: the bundle directory (``bundle.json`` + weights).
        cfg: a :class:`veracity.config.RegisterConfig`.
        gate: a :class:`veracity.config.GateConfig`.
        root: project root (the MLflow store is ``root/mlflow.db`` unless MLFLOW_TRACKING_URI).
        card_out: also write the model card here.

    Returns:
        ``model_name, version, run_id, promoted, champion_version, previous_champion_version,
        reasons, candidate, champion`` (the last two are gate metrics; champion None if none).

    Raises:
        veracity.bundle.BundleError: a file is missing, extra or its sha256 differs.
    """
    bundle_dir = Path(bundle_dir)
    bundle = verify_bundle(bundle_dir)
    candidate = gate_metrics(bundle)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from veracity.mlflow_model import CODE_PATH, signature
    from veracity.modelcard import model_card

    name = cfg.model_name
    digest = sha256_file(bundle_dir / BUNDLE_JSON)
    with start_run(f"register-{name}", root, tags={"stage": "register", "bundle_sha256": digest}) as tracker:
        tracker.log_params({"register": to_plain(cfg), "gate": to_plain(gate), "fusion_rule": (bundle.get("fusion") or {}).get("rule"),
                            "thresholds": bundle.get("thresholds") or {},
                            "members": [m.get("name") for m in bundle.get("members") or [] if isinstance(m, dict)]})
        tracker.log_metrics({GATE_METRICS[k]: v for k, v in candidate.items() if v is not None})
        ens = ((bundle.get("metrics") or {}).get("ensemble") or {})
        test = ens.get("test") or {}
        tracker.log_metrics({f"test_{k}": v for k, v in test.items() if k not in ("auc", "ece")})
        per_method = ens.get("per_method") or {}
        aucs = {m: v.get("auc") if isinstance(v, dict) else v for m, v in per_method.items()}
        tracker.log_metrics({f"test_auc.{_metric_key(m)}": v for m, v in aucs.items() if isinstance(v, int | float)})
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
            champion = {k: run_metrics.get(m) for k, m in GATE_METRICS.items()}

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
        card = model_card(bundle, extra={**result, "model_name": name})
        mlflow.log_text(card, "model_card.md")
        tracker.log_dict(result, "register/summary.json")
    if card_out is not None:
        Path(card_out).parent.mkdir(parents=True, exist_ok=True)
        Path(card_out).write_text(card)
    return result


def register(cfg: RegisterConfig, gate: GateConfig, bundle: Path, out: Path, *, root: Path) -> dict[str, Any]:
    """Register ``bundle`` (alias ``challenger``) and promote it to ``champion`` if it passes the gate.

    Args:
        cfg: the ``register`` section (model name, AUC margin against the champion).
        gate: the quality bars a champion must meet (``gate`` section).
        bundle: the bundle directory written by the ensemble stage.
        out: directory for ``summary.json``, ``model_card.md`` and the resolved config.
        root: repository root (the MLflow store is ``root/mlflow.db`` unless
            ``MLFLOW_TRACKING_URI`` is set).

    Returns:
        What :func:`register_bundle` returns (``run_id`` included).

    Raises:
        BundleError: no bundle at ``bundle``, or a file that does not match its checksum.
    """
    bundle, out = Path(bundle), Path(out)
    if not (bundle / BUNDLE_JSON).is_file():
        raise BundleError(f"{bundle} holds no {BUNDLE_JSON} (run `veracity ensemble` first)")
    out.mkdir(parents=True, exist_ok=True)
    res = register_bundle(bundle, cfg, gate, root, card_out=out / "model_card.md")
    # summary.json is a DVC metric: run ids (new on every run) stay in MLflow and the model card.
    summary = {k: v for k, v in res.items() if k != "run_id"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    write_resolved(cfg, out)
    return res
