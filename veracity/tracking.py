"""MLflow tracking: one run per training or evaluation, with lineage tags.

The default backend is a SQLite database under the project (``mlflow.db``), a real MLflow
backend store; ``MLFLOW_TRACKING_URI`` points runs at a server instead. Every run is
tagged with the git commit and the DVC hash of the raw corpus (``data.dvc``).
:func:`register_bundle` registers a bundle in the model registry (alias ``challenger``) and
moves alias ``champion`` to it only when :func:`promotion_gate` passes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from veracity.config import RegisterConfig

EXPERIMENT = "veracity"


def tracking_uri(root: Path | str = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def git_commit(root: Path | str = ".") -> str | None:
    """The checked-out commit, or None outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def data_hash(root: Path | str = ".") -> str | None:
    """The md5 that ``data.dvc`` records for the raw corpus."""
    path = Path(root) / "data.dvc"
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


class Tracker:
    """A thin wrapper over an active MLflow run (so callers never import mlflow)."""

    def __init__(self, mlflow_module: Any, run: Any):
        self._mlflow = mlflow_module
        self.run = run
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log nested params flattened to dotted keys (values as strings, MLflow's limit)."""
        flat = {k: str(v)[:6000] for k, v in _flat("", params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """Log finite numeric metrics."""
        clean = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and v == v}
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Log a file or a directory's files."""
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path)
        elif path.exists():
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        """Log a dict as a JSON artifact."""
        self._mlflow.log_dict(data, name)


@contextmanager
def start_run(run_name: str, root: Path | str = ".", tags: dict[str, str] | None = None,
              experiment: str = EXPERIMENT) -> Iterator[Tracker]:
    """Open an MLflow run in the project's store, tagged with git commit and data hash."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    root = Path(root)
    # MLflow 3 exports the URI given to set_tracking_uri to the environment; note what the
    # user set, and put it back afterwards so a later run with another root is not misled.
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        mlflow.set_tracking_uri(tracking_uri(root))
        if mlflow.get_experiment_by_name(experiment) is None:
            location = None if user_uri else (root / "mlartifacts").resolve().as_uri()
            mlflow.create_experiment(experiment, artifact_location=location)
        mlflow.set_experiment(experiment)
        all_tags = {"git_commit": git_commit(root) or "unknown", "data_dvc_md5": data_hash(root) or "unknown"}
        all_tags.update(tags or {})
        with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
            yield Tracker(mlflow, run)
    finally:
        if user_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri


# --- Registration and the promotion gate (``veracity register``) -------------------------

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


def promotion_gate(candidate: dict, champion: dict | None, cfg: RegisterConfig) -> tuple[bool, list[str]]:
    """Decide whether a candidate may replace the champion.

    The candidate passes iff (there is no champion, or its AUC >= the champion's AUC minus
    ``cfg.auc_margin``) and its ECE <= ``cfg.max_ece`` and its robustness drop <=
    ``cfg.max_robustness_drop``. A candidate metric that is missing fails its check; a
    champion without an AUC on record is not compared.

    Args:
        candidate: ``auc``, ``ece``, ``robustness_drop`` of the new bundle.
        champion: the same for the current champion, or None when there is none.
        cfg: a :class:`veracity.config.RegisterConfig`.

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

    for key, limit, name in (("ece", cfg.max_ece, "max_ece"),
                             ("robustness_drop", cfg.max_robustness_drop, "max_robustness_drop")):
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
    import re

    return re.sub(r"[^\w\-. /]", "_", str(text))


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def register_bundle(bundle_dir: Path, cfg: RegisterConfig, root: Path = Path("."), card_out: Path | None = None) -> dict:
    """Register a verified bundle as a new model version and promote it if it passes the gate.

    Verifies every checksum, logs the bundle as an MLflow pyfunc model (the bundle directory
    is its artifact) with the gate metrics and the model card, registers a new version of
    ``cfg.model_name`` with alias ``challenger``, compares it with the version behind alias
    ``champion`` (metrics of that version's run) and moves ``champion`` to it only if
    :func:`promotion_gate` passes. The version is tagged with the gate's result and reasons.

    Args:
        bundle_dir: the bundle directory (``bundle.json`` + weights).
        cfg: a :class:`veracity.config.RegisterConfig`.
        root: project root (the MLflow store is ``root/mlflow.db`` unless MLFLOW_TRACKING_URI).
        card_out: also write the model card here.

    Returns:
        ``model_name, version, run_id, promoted, champion_version, previous_champion_version,
        reasons, candidate, champion`` (the last two are gate metrics; champion None if none).

    Raises:
        veracity.ensemble.BundleError: a file is missing, extra or its sha256 differs.
    """
    from veracity.ensemble import verify_bundle

    bundle_dir = Path(bundle_dir)
    bundle = verify_bundle(bundle_dir)
    candidate = gate_metrics(bundle)

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from veracity.config import to_plain
    from veracity.mlflow_model import CODE_PATH, signature
    from veracity.modelcard import model_card

    name = cfg.model_name
    digest = _file_sha256(bundle_dir / "bundle.json")
    with start_run(f"register-{name}", root=root, tags={"stage": "register", "bundle_sha256": digest}) as tracker:
        tracker.log_params({"register": to_plain(cfg), "fusion_rule": (bundle.get("fusion") or {}).get("rule"),
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

        passed, reasons = promotion_gate(candidate, champion, cfg)
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
