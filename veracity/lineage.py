"""Lineage: where an artifact came from, as hashes (DESIGN §3).

Owns the one sha256 helper for files, the one JSON encoder default used for every
report and ``bundle.json`` (and :func:`plain`, the same for data built in memory), and what the working tree says about the code and data a
run used: the git commit, the md5 that ``data.dvc`` records for the raw corpus, and the
md5s that ``dvc.lock`` records for each trained member. Every function takes the
repository root as an argument; nothing here reads the current directory implicitly.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_default(obj: object) -> object:
    """``json.dumps(default=...)`` for NumPy scalars and arrays, paths, tuples and sets."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plain(obj: Any) -> Any:
    """Nested data made JSON-safe: NumPy scalars and arrays as Python ones, non-finite floats
    as None (JSON has no NaN), paths as POSIX strings, mapping keys as strings."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return obj.as_posix()
    return obj


def git_commit(root: Path | str) -> str | None:
    """The commit checked out at ``root``, or None outside a git work tree."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def data_hash(root: Path | str) -> str | None:
    """The md5 that ``<root>/data.dvc`` records for the raw corpus (None without one)."""
    path = Path(root) / "data.dvc"
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def member_hashes(root: Path | str, names: Sequence[str]) -> dict[str, str]:
    """The md5 that ``<root>/dvc.lock`` records for each member's model directory, by stage."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    found = {}
    for stage, body in stages.items():
        for o in body.get("outs", []) or []:
            path = str(o.get("path", ""))
            if path.startswith("models/") and path.split("/", 1)[1] in names:
                found[stage] = o.get("md5")
    return dict(sorted(found.items()))
