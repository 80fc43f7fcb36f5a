"""The manifest: one table describing a corpus, whatever its source (DESIGN §3).

Columns: ``video_id, path, label, split, method, identity, video_label, audio_label``
plus optional ``source_identity`` (the donor/driver of a fake, so that splits can keep
both people on the same side) and ``duration_s``.

``label`` is 0 (real) or 1 (fake). ``video_label`` / ``audio_label`` say which modality
was manipulated; they are nullable because some datasets (DFDC) do not say. ``path`` is
stored relative to the manifest's directory so a corpus can be moved as a whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = (
    "video_id",
    "path",
    "label",
    "split",
    "method",
    "identity",
    "video_label",
    "audio_label",
)
OPTIONAL_COLUMNS = ("source_identity", "duration_s")
SPLITS = ("train", "val", "test")
REAL_METHOD = "real"

_INT_COLUMNS = ("label", "video_label", "audio_label")
_STR_COLUMNS = ("video_id", "path", "split", "method", "identity", "source_identity")


class ManifestError(ValueError):
    """A manifest that does not follow the contract."""


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with contract dtypes and column order (required, optional, then extras).

    Raises:
        ManifestError: a required column is missing or a label is not an integer.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest is missing required column(s): {', '.join(missing)}")
    out = df.copy()
    for col in _INT_COLUMNS:
        try:
            out[col] = pd.to_numeric(out[col], errors="raise").astype("Int64")
        except (ValueError, TypeError) as exc:
            raise ManifestError(f"column '{col}' must hold integers 0/1 (or be empty): {exc}") from None
    for col in _STR_COLUMNS:
        if col in out.columns:
            out[col] = out[col].astype("string")
    if "source_identity" not in out.columns:
        out["source_identity"] = pd.Series(pd.NA, index=out.index, dtype="string")
    if "duration_s" in out.columns:
        out["duration_s"] = pd.to_numeric(out["duration_s"], errors="coerce")
    ordered = [*REQUIRED_COLUMNS, *[c for c in OPTIONAL_COLUMNS if c in out.columns]]
    extras = [c for c in out.columns if c not in ordered]
    return out[ordered + extras].reset_index(drop=True)


def from_records(records: Iterable[Mapping[str, object]]) -> pd.DataFrame:
    """Build a normalised manifest from row dicts."""
    rows = list(records)
    # Columns from every row, not just the first, so a key only some rows carry is kept.
    columns = list(dict.fromkeys(k for row in rows for k in row)) or list(REQUIRED_COLUMNS)
    df = pd.DataFrame(rows, columns=columns)
    return normalize(df)


def write(df: pd.DataFrame, path: Path | str) -> Path:
    """Write a manifest as CSV (sorted by ``video_id`` so identical corpora give identical bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    normalize(df).sort_values("video_id", kind="stable").to_csv(path, index=False)
    return path


def read(path: Path | str) -> pd.DataFrame:
    """Read a manifest CSV written by :func:`write` (paths stay relative)."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    try:
        df = pd.read_csv(path, dtype={c: "string" for c in _STR_COLUMNS}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} is not a readable CSV: {exc}") from None
    return normalize(df)


def resolve_paths(df: pd.DataFrame, root: Path | str) -> pd.Series:
    """Absolute path of every row, with relative paths taken from ``root``."""
    root = Path(root)
    return df["path"].map(lambda p: str(p) if os.path.isabs(str(p)) else str((root / str(p)).resolve()))


def relative_to(path: Path | str, base: Path | str) -> str:
    """``path`` relative to ``base`` in POSIX form (``..`` allowed), for portable manifests."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def assign_group_splits(
    groups: Iterable[str], ratios: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Assign whole groups (identities) to splits, deterministically.

    Groups are shuffled with ``seed`` and cut by the ratios, so a group never spans two
    splits. Every split gets at least one group when there are enough groups.
    """
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    n = len(order)
    names = [s for s in SPLITS if ratios.get(s, 0) > 0]
    counts = [int(round(ratios[s] * n)) for s in names]
    if n >= len(names):
        counts = [max(1, c) for c in counts]
    # Give the rounding remainder to (or take it from) train, the largest split.
    counts[0] += n - sum(counts)
    out: dict[str, str] = {}
    start = 0
    for name, count in zip(names, counts, strict=True):
        for g in order[start : start + count]:
            out[g] = name
        start += count
    return out


def identity_groups(identity: Iterable[str], source_identity: Iterable[object]) -> dict[str, str]:
    """Union identities linked by a fake (target with donor/driver) into groups.

    Returns a map identity -> group representative, so splitting by group keeps a donor
    and its target on the same side.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ident, src in zip(identity, source_identity, strict=True):
        a = find(str(ident))
        if src is not None and not (isinstance(src, float) and np.isnan(src)) and src is not pd.NA:
            for donor in str(src).split("|"):
                if donor:
                    b = find(donor)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    return {k: find(k) for k in list(parent)}
