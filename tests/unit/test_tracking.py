"""MLflow runs land in the project's own SQLite store, with artifacts under mlartifacts/."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from veracity.tracking import start_run


def _runs(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("select name, artifact_uri from runs").fetchall()


def test_each_project_root_gets_its_own_store_and_artifact_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        (root / "note.txt").write_text("x")
        with start_run(f"run-{root.name}", root=root) as tr:
            tr.log_metrics({"m": 1.0}, step=0)
            tr.log_artifact(root / "note.txt", "files")
    for root in (a, b):
        runs = _runs(root / "mlflow.db")
        assert [r[0] for r in runs] == [f"run-{root.name}"]
        assert runs[0][1].startswith((root / "mlartifacts").resolve().as_uri())
        assert list((root / "mlartifacts").rglob("note.txt"))
    # The URI MLflow exported while the run was open does not outlive it.
    assert "MLFLOW_TRACKING_URI" not in os.environ
