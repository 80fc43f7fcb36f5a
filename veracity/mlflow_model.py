"""The MLflow pyfunc wrapper of a Veracity bundle: what the registry stores and serves.

The registered model is the bundle directory itself (an MLflow artifact) plus this thin
``PythonModel``: loading it builds :class:`veracity.analyzer.Analyzer` on the bundle, so
``mlflow.pyfunc.load_model("models:/veracity-detector@champion")`` analyses files with
exactly the code path of ``veracity analyze`` and the service.

The model is logged as code (MLflow "models from code"): MLflow stores this file, not a
pickle, and runs it to rebuild the model, so nothing in the registry is unpickled. Importing
this module imports ``mlflow``; :mod:`veracity.tracking` imports it only when it logs a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd

from veracity.lineage import json_default

CODE_PATH = Path(__file__)  # what ``log_model(python_model=...)`` is given
INPUT_COLUMN = "path"
OUTPUT_COLUMNS = ("path", "verdict", "probability", "reason", "report")


def signature() -> Any:
    """Input: a string column ``path``; output: verdict, probability, reason and the JSON report."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([
            ColSpec("string", "path"),
            ColSpec("string", "verdict"),
            ColSpec("double", "probability", required=False),
            ColSpec("string", "reason", required=False),
            ColSpec("string", "report"),
        ]),
    )


def _paths(model_input: Any) -> list[str]:
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input.columns:
            raise ValueError(f"model input needs a {INPUT_COLUMN!r} column, got {list(model_input.columns)}")
        return [str(p) for p in model_input[INPUT_COLUMN].tolist()]
    if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        value = model_input[INPUT_COLUMN]
        return [str(p) for p in (value if isinstance(value, list | tuple) else [value])]
    if isinstance(model_input, list | tuple):
        return [str(p) for p in model_input]
    raise ValueError(f"model input must be a DataFrame with a {INPUT_COLUMN!r} column")


class VeracityModel(mlflow.pyfunc.PythonModel):
    """A bundle as an MLflow model: one row per video path in, one verdict row out."""

    def __init__(self) -> None:
        self.analyzer: Any = None

    def load_context(self, context: Any) -> None:
        """Build the analyzer on the bundle artifact (verifies every checksum)."""
        from veracity.analyzer import Analyzer

        self.analyzer = Analyzer(Path(context.artifacts["bundle"]))

    # A DataFrame hint: MLflow infers nothing from it and validates inputs with the signature.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Analyse each file of ``model_input["path"]``.

        Returns:
            A DataFrame with columns ``path, verdict, probability, reason, report`` where
            ``report`` is the JSON of ``Report.to_dict()``. A bad or missing file gives
            ``ABSTAIN`` with the Analyzer's reason (``missing``, ``corrupt``, ...), and the
            rest of the batch still runs.
        """
        if self.analyzer is None:
            self.load_context(context)
        rows = []
        for path in _paths(model_input):
            result = self.analyzer.analyze(Path(path))
            rows.append({
                "path": path,
                "verdict": str(result.verdict),
                "probability": None if result.probability is None else float(result.probability),
                "reason": result.reason,
                "report": json.dumps(result.to_dict(), default=json_default, sort_keys=True),
            })
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS)).astype({"probability": "float64"})


# Models from code: when MLflow runs this file to log or load the model, this is the model.
mlflow.models.set_model(VeracityModel())
