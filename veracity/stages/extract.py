"""The ``extract`` stage: every clip -> a feature record, then the index and the failure bound.

Runs :func:`veracity.extract.extract` on one shard (or all clips), merges shard parts
into ``index.csv`` + ``summary.json``, copies the summary to the metrics path DVC reads,
logs the unusable clips with their reasons and applies the failure bound
(:func:`veracity.extract.check_failures`), so whoever calls it gets the whole stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from veracity import extract as ex
from veracity.config import ExtractConfig
from veracity.contract import DataContract

log = logging.getLogger(__name__)
_LISTED = 20  # unusable clips named in the log


def _finish(result: ex.ExtractResult, cfg: ExtractConfig, metrics: Path | None) -> ex.ExtractResult:
    summary = result.summary
    if metrics is not None:
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(json.dumps(summary, indent=2, sort_keys=True))
    bad = result.index[~result.index["status"].isin(cfg.usable_statuses)]
    listing = [f"  {row.video_id}: {row.status}: {row.message}" for row in bad.head(_LISTED).itertuples()]
    more = [f"  ... and {len(bad) - _LISTED} more (index.csv)"] if len(bad) > _LISTED else []
    try:
        ex.check_failures(summary, cfg)
    except ex.ExtractError as exc:
        raise ex.ExtractError("\n".join([str(exc), *listing, *more])) from None
    for line in listing + more:
        log.warning("%s", line)
    return result


def extract(cfg: ExtractConfig, contract: DataContract, manifest: Path, out: Path, *,
            shard: tuple[int, int] = (0, 1), metrics: Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> ex.ExtractResult:
    """Extract one shard of the manifest's clips into ``out``; with one shard, also merge.

    Args:
        cfg: the ``extract`` section.
        contract: the data contract (``contract`` section, built).
        manifest: ``manifest.csv``; relative clip paths are taken from its directory.
        out: the features directory (records, ``index.csv``, ``summary.json``).
        shard: ``(i, n)``: this run extracts the clips of shard ``i`` of ``n``; run
            :func:`merge` once every shard is done.
        metrics: also write the summary here (the DVC metrics file).
        progress: ``progress(done, total)`` per clip.

    Raises:
        ExtractError: unreadable manifest, or (after a merge) unusable clips beyond
            ``cfg.max_failure_ratio``, or any clip that failed by a code error.
    """
    result = ex.extract(cfg, contract, manifest, out, shard, progress=progress)
    if shard[1] > 1:
        return result
    return _finish(result, cfg, metrics)


def merge(cfg: ExtractConfig, out: Path, manifest: Path | None = None, *,
          metrics: Path | None = None) -> ex.ExtractResult:
    """Join the shard parts under ``out`` into ``index.csv`` and apply the failure bound.

    Raises:
        ExtractError: parts missing or inconsistent, or the failure bound is passed.
    """
    return _finish(ex.merge(cfg, out, manifest), cfg, metrics)
