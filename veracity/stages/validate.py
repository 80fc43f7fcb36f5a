"""The ``validate`` and ``validate_features`` stages: Great Expectations suites on the way in.

Both save the GX result (JSON, HTML, ``summary.json``) and the resolved config under
``out`` and raise :class:`~veracity.validation.ValidationFailed` (message: the suite's
summary, naming each failed expectation and the offending ids) when an expectation fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from veracity import status
from veracity import validation as gx
from veracity.config import FeatureBounds, ValidateConfig, write_resolved


def validate_manifest(cfg: ValidateConfig, manifest: Path, out: Path) -> gx.SuiteReport:
    """Check the manifest against the ``validate`` bounds; the report when it passes."""
    report = gx.validate_manifest(cfg, manifest, out)
    write_resolved(cfg, out)
    return report.raise_for_failure()


def validate_features(bounds: FeatureBounds, usable_statuses: Sequence[str], index: Path,
                      out: Path) -> gx.SuiteReport:
    """Check an extraction ``index.csv`` against ``validate.features``; the report when it passes."""
    report = gx.validate_features(bounds, usable_statuses, status.EXTRACT_STATUSES, index, out)
    write_resolved(bounds, out)
    return report.raise_for_failure()
