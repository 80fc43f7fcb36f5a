"""The ``corpus`` stage: a raw corpus (synthetic or a real dataset layout) -> the manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from veracity.config import CorpusConfig, write_resolved
from veracity.corpus import manifest
from veracity.corpus.adapters import build_manifest
from veracity.stages import StageError

MANIFEST_CSV = "manifest.csv"


def corpus(cfg: CorpusConfig, out: Path, root: Path | None = None) -> pd.DataFrame:
    """Build the manifest of the corpus at ``root`` and write ``out/manifest.csv`` with its config.

    Args:
        cfg: the ``corpus`` section (source layout, split ratios, seed).
        out: directory for ``manifest.csv`` and ``config.resolved.yaml``.
        root: the dataset root (default ``cfg.root``).

    Returns:
        The manifest as written.

    Raises:
        StageError: the root does not exist.
        AdapterError, ManifestError: the layout cannot be read, or the manifest breaks its contract.
    """
    root = Path(root or cfg.root)
    if not root.exists():
        hint = " (run `veracity generate` first)" if cfg.source == "synthetic" else ""
        raise StageError(f"corpus root {root} does not exist{hint}")
    df = build_manifest(cfg, root, Path(out))
    manifest.write(df, Path(out) / MANIFEST_CSV)
    write_resolved(cfg, out)
    return df
