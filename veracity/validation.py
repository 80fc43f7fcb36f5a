"""Data validation with Great Expectations 1.x (``veracity validate``).

A :class:`Suite` is a name, a function that derives helper columns on the frame and a
list of GX expectation objects built from the config. Properties that GX cannot state
directly (a file exists, an identity group sits in one split, clips per method, clips
per split, method consistent with label) become derived columns (``_file_exists``,
``_identity_n_splits``, ``_method_count``, ``_split_count``, ``_method_consistent``)
checked by ordinary GX expectations, so every check is a GX expectation result with the
offending ``video_id`` values attached.

:func:`run_suite` runs any suite on a DataFrame in a fresh ephemeral GX context and
returns a :class:`SuiteReport` (readable summary, GX JSON, a small HTML page and a
``summary.json`` for ``dvc metrics``). :func:`manifest_suite` is the suite for the
manifest contract (DESIGN §3) and :func:`validate_manifest` is the stage function.

Great Expectations is imported lazily (it takes seconds to import) and always with
telemetry off, so importing this module is cheap and a run writes nothing outside the
output directory.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from veracity.config import FeatureBounds, ValidateConfig
from veracity.corpus import manifest as mf
from veracity.status import EXTRACT_STATUSES

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

SUMMARY_NAME = "summary.json"
# How many offending ids a result keeps for the summary (the GX JSON keeps them all).
MAX_SAMPLE = 10
# COMPLETE so every unexpected row is listed with its id, not just the first 20 values.
RESULT_FORMAT = "COMPLETE"

_ID_PLACEHOLDER = "<null id>"


class ValidationFailed(RuntimeError):
    """Raised for a failed validation; carries the :class:`SuiteReport` for the CLI."""

    def __init__(self, report: SuiteReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class Suite:
    """A named expectation suite plus how to derive the helper columns it checks.

    Attributes:
        name: suite name; also the stem of the saved ``<name>.json`` / ``<name>.html``.
        expectations: GX expectation objects (``gx.expectations.*``), each with
            ``meta={"notes": ...}`` (the human description used in summaries) and
            optionally ``meta["context"]``: columns whose values among the failing rows
            the summary lists (e.g. ``["method"]`` names the method whose count is off).
        derive: returns a copy of the frame with helper columns added; ``None`` for none.
        context_columns: columns returned with each unexpected row besides the id column
            (only those present in the frame are requested from GX).
    """

    name: str
    expectations: Sequence[Expectation]
    derive: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    context_columns: tuple[str, ...] = ()


@dataclass
class ExpectationOutcome:
    """One expectation's result, flattened for summaries and the HTML page.

    Attributes:
        expectation_type: e.g. ``expect_column_values_to_be_in_set``.
        column: the column it checks, or ``None`` for a table-level expectation.
        kwargs: the expectation's arguments (without GX's ``batch_id``).
        success: whether it passed.
        notes: the human description from ``meta["notes"]``.
        observed_value: the aggregate GX observed (mean, row count, distinct set...).
        unexpected_count: rows that failed (column-map expectations).
        unexpected_ids: up to :data:`MAX_SAMPLE` ids of failing rows.
        unexpected_values: up to :data:`MAX_SAMPLE` distinct failing values.
        context: for each ``meta["context"]`` column, its distinct values among failing rows.
        details: any other keys of GX's result (e.g. ``partial_missing_list`` of a
            distinct-values check, whose ``observed_value`` is empty in GX 1.24).
        exception: GX's exception message when the expectation could not be evaluated.
    """

    expectation_type: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    notes: str = ""
    observed_value: Any = None
    unexpected_count: int | None = None
    unexpected_ids: list[str] = field(default_factory=list)
    unexpected_values: list[Any] = field(default_factory=list)
    context: dict[str, list[str]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    exception: str | None = None

    @property
    def label(self) -> str:
        """``type(column)``, as used in summaries."""
        return f"{self.expectation_type}({self.column or 'table'})"

    def describe(self) -> str:
        """One line saying what failed and on which rows (or what was observed)."""
        parts = [f"{'passed' if self.success else 'FAILED'} {self.label}"]
        if self.unexpected_count:
            ids = ", ".join(self.unexpected_ids)
            more = self.unexpected_count - len(self.unexpected_ids)
            tail = f" (+{more} more)" if more > 0 else ""
            parts.append(f": {self.unexpected_count} rows: {ids}{tail}")
        elif self.observed_value is not None:
            parts.append(f": observed {_short(self.observed_value)}")
        elif self.details:
            parts.append(": " + ", ".join(f"{k} {_short(v)}" for k, v in self.details.items()))
        if self.notes:
            parts.append(f" ({self.notes})")
        extra = [f"{col}: {', '.join(vals)}" for col, vals in self.context.items() if vals]
        if self.unexpected_values != ["<null>"] and self.unexpected_values and not extra:
            extra.append("values: " + ", ".join(_short(v) for v in self.unexpected_values))
        if extra:
            parts.append(" [" + "; ".join(extra) + "]")
        if self.exception:
            parts.append(f" error: {self.exception}")
        return "".join(parts)


@dataclass
class SuiteReport:
    """The outcome of one suite run.

    Attributes:
        suite_name: the suite's name.
        success: every expectation passed (and the input could be read).
        results: one :class:`ExpectationOutcome` per expectation, in suite order.
        n_rows: rows validated.
        elapsed_s: wall time of the GX run (context, batch, validation).
        gx_result: GX's full result (``to_json_dict()``); empty when GX did not run.
        error: why GX could not run at all (e.g. an unreadable manifest), else ``None``.
    """

    suite_name: str
    success: bool
    results: list[ExpectationOutcome] = field(default_factory=list)
    n_rows: int = 0
    elapsed_s: float = 0.0
    gx_result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def failed(self) -> list[ExpectationOutcome]:
        """The expectations that did not pass."""
        return [r for r in self.results if not r.success]

    def summary(self) -> str:
        """Readable multi-line text: verdict, then each failed expectation and its rows."""
        if self.error is not None:
            return f"{self.suite_name}: FAILED: {self.error}"
        n_ok = len(self.results) - len(self.failed)
        head = (
            f"{self.suite_name}: {'PASSED' if self.success else 'FAILED'} "
            f"({n_ok}/{len(self.results)} expectations passed, {self.n_rows} rows)"
        )
        return "\n".join([head, *(f"  {r.describe()}" for r in self.failed)])

    def metrics(self) -> dict[str, Any]:
        """Small, stable numbers for ``dvc metrics`` (no timings, so reruns diff clean)."""
        return {
            "success": self.success,
            "rows": self.n_rows,
            "evaluated": len(self.results),
            "passed": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "unexpected_rows": sum(r.unexpected_count or 0 for r in self.results),
        }

    def raise_for_failure(self) -> SuiteReport:
        """Return ``self`` when it passed.

        Raises:
            ValidationFailed: the suite failed; its message is :meth:`summary`.
        """
        if not self.success:
            raise ValidationFailed(self)
        return self

    def save(self, out_dir: Path | str) -> dict[str, Path]:
        """Write ``<suite>.json`` (GX result), ``<suite>.html`` and ``summary.json``.

        Args:
            out_dir: directory to write into (created if needed).

        Returns:
            The written paths keyed ``json``, ``html`` and ``summary``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": out / f"{self.suite_name}.json",
            "html": out / f"{self.suite_name}.html",
            "summary": out / SUMMARY_NAME,
        }
        gx_json = _without_volatile(self.gx_result or {"success": False, "error": self.error, "results": []})
        paths["json"].write_text(json.dumps(gx_json, indent=2, default=str) + "\n")
        paths["html"].write_text(self.to_html())
        paths["summary"].write_text(json.dumps(self.metrics(), indent=2) + "\n")
        return paths

    def to_html(self) -> str:
        """A self-contained HTML page: verdict and a table of expectations."""
        esc = html.escape
        rows = []
        for r in self.results:
            status = "pass" if r.success else "FAIL"
            ids = ", ".join(r.unexpected_ids)
            if r.unexpected_count and r.unexpected_count > len(r.unexpected_ids):
                ids += f" (+{r.unexpected_count - len(r.unexpected_ids)} more)"
            detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in r.context.items() if v)
            observed = "" if r.observed_value is None else _short(r.observed_value, 200)
            rows.append(
                f'<tr class="{status.lower()}"><td>{status}</td><td>{esc(r.label)}</td>'
                f"<td>{esc(r.notes)}</td><td>{esc(observed)}</td>"
                f"<td>{r.unexpected_count if r.unexpected_count is not None else ''}</td>"
                f"<td>{esc(ids)}</td><td>{esc(detail or (r.exception or ''))}</td></tr>"
            )
        verdict = "PASSED" if self.success else "FAILED"
        error = f"<p class='fail'>{esc(self.error)}</p>" if self.error else ""
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{esc(self.suite_name)}: {verdict}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
            "tr.fail td:first-child,.fail{color:#b00;font-weight:bold}"
            "tr.pass td:first-child{color:#070}</style></head><body>"
            f"<h1>{esc(self.suite_name)}: {verdict}</h1>{error}"
            f"<p>{len(self.results) - len(self.failed)}/{len(self.results)} expectations "
            f"passed on {self.n_rows} rows.</p>"
            "<table><tr><th>status</th><th>expectation</th><th>meaning</th><th>observed</th>"
            "<th>unexpected</th><th>ids</th><th>details</th></tr>"
            + "".join(rows)
            + "</table></body></html>\n"
        )


# --------------------------------------------------------------------------- GX plumbing


def _without_volatile(result: dict[str, Any]) -> dict[str, Any]:
    """Drop the load time and run id GX stamps on a result: same data, same bytes (DVC)."""
    out = dict(result)
    out.pop("id", None)
    meta = dict(out.get("meta") or {})
    markers = dict(meta.get("batch_markers") or {})
    markers.pop("ge_load_time", None)
    if markers:
        meta["batch_markers"] = markers
    out["meta"] = meta
    return out


def _gx():
    """Import GX with telemetry off (the env must be set before the first import)."""
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _context():
    """A fresh in-memory GX context: no analytics, no progress bars, no docs site.

    ``get_context(mode="ephemeral")`` alone would create (and delete) a temp docs-site
    directory and print tqdm bars on every validation, hence the explicit config.
    """
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _key(expectation_type: str, kwargs: Mapping[str, Any]) -> str:
    # GX returns results grouped by domain, not in suite order; a suite holds no two
    # expectations with equal type and kwargs, so this key maps results back.
    clean = {k: v for k, v in kwargs.items() if k != "batch_id"}
    return expectation_type + json.dumps(clean, sort_keys=True, default=str)


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _distinct(values: Sequence[Any], limit: int = MAX_SAMPLE) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        v = "<null>" if _is_missing(v) else v
        if v not in seen:
            seen.append(v)
            if len(seen) >= limit:
                break
    return seen


# Keys of a column-map result that the outcome already holds (or that are noise in a summary).
_COLUMN_MAP_KEYS = frozenset(
    {
        "element_count",
        "unexpected_count",
        "unexpected_percent",
        "partial_unexpected_list",
        "unexpected_index_column_names",
        "missing_count",
        "missing_percent",
        "unexpected_percent_total",
        "unexpected_percent_nonmissing",
        "partial_unexpected_counts",
        "partial_unexpected_index_list",
        "unexpected_list",
        "unexpected_index_list",
        "unexpected_index_query",
    }
)


def _outcome(res: Mapping[str, Any], id_column: str | None) -> ExpectationOutcome:
    config = res.get("expectation_config", {})
    kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
    meta = config.get("meta") or {}
    result = res.get("result") or {}
    index_rows = result.get("unexpected_index_list") or []
    ids: list[str] = []
    context: dict[str, list[str]] = {}
    if index_rows and isinstance(index_rows[0], dict):
        raw_ids = [row.get(id_column) for row in index_rows]
        ids = [_ID_PLACEHOLDER if _is_missing(v) else str(v) for v in raw_ids[:MAX_SAMPLE]]
        for col in meta.get("context") or []:
            vals = [row.get(col) for row in index_rows if col in row]
            context[col] = sorted(str(v) for v in _distinct(vals))
    elif index_rows:  # no id column: GX lists row positions
        ids = [f"row {v}" for v in index_rows[:MAX_SAMPLE]]
    details = {
        k.removeprefix("partial_"): v
        for k, v in result.items()
        if k not in _COLUMN_MAP_KEYS
        and k != "observed_value"
        and not (k.startswith("partial_") and k.removeprefix("partial_") in result)
    }
    exc = res.get("exception_info") or {}
    message = exc.get("exception_message") if exc.get("raised_exception") else None
    return ExpectationOutcome(
        expectation_type=config.get("type", "?"),
        column=kwargs.get("column"),
        kwargs=kwargs,
        success=bool(res.get("success")),
        notes=str(meta.get("notes", "")),
        observed_value=result.get("observed_value"),
        unexpected_count=result.get("unexpected_count"),
        unexpected_ids=ids,
        unexpected_values=_distinct(result.get("unexpected_list") or []),
        context=context,
        details=details,
        exception=message,
    )


def run_suite(df: pd.DataFrame, suite: Suite, id_column: str | None = "video_id") -> SuiteReport:
    """Validate ``df`` against ``suite`` with Great Expectations.

    Args:
        df: the table to validate (not modified).
        suite: the suite; its ``derive`` adds helper columns first.
        id_column: column naming rows in results (``None`` or absent: row positions).

    Returns:
        The :class:`SuiteReport`, results in suite order.
    """
    gx = _gx()
    start = time.perf_counter()
    frame = suite.derive(df) if suite.derive is not None else df.copy()
    context = _context()
    asset = context.data_sources.add_pandas(suite.name).add_dataframe_asset("frame")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": frame}
    )
    gx_suite = gx.ExpectationSuite(name=suite.name)
    for expectation in suite.expectations:
        # Copies: adding ties an expectation to the suite (save callback), and a Suite
        # object may be run many times.
        gx_suite.add_expectation(expectation.copy(deep=True))
    index_cols = [c for c in (id_column, *suite.context_columns) if c and c in frame.columns]
    result_format: dict[str, Any] = {"result_format": RESULT_FORMAT}
    if id_column and id_column in frame.columns:
        result_format["unexpected_index_column_names"] = list(dict.fromkeys(index_cols))
    validation = batch.validate(gx_suite, result_format=result_format)
    elapsed = time.perf_counter() - start

    raw = validation.to_json_dict()
    ordered = {
        _key(e.expectation_type, e.configuration.kwargs): i
        for i, e in enumerate(gx_suite.expectations)
    }
    results = sorted(
        raw.get("results", []),
        key=lambda r: ordered.get(
            _key(r["expectation_config"]["type"], r["expectation_config"]["kwargs"]), len(ordered)
        ),
    )
    id_col = id_column if id_column and id_column in frame.columns else None
    outcomes = [_outcome(r, id_col) for r in results]
    return SuiteReport(
        suite_name=suite.name,
        success=bool(raw.get("success")) and all(o.success for o in outcomes),
        results=outcomes,
        n_rows=len(frame),
        elapsed_s=elapsed,
        gx_result=raw,
    )


# --------------------------------------------------------------------------- manifest suite

_FILE_EXISTS = "_file_exists"
_METHOD_CONSISTENT = "_method_consistent"
_IDENTITY_GROUP = "_identity_group"
_IDENTITY_N_SPLITS = "_identity_n_splits"
_METHOD_COUNT = "_method_count"
_SPLIT_COUNT = "_split_count"


def derive_manifest_columns(
    df: pd.DataFrame, root: Path | str, check_files: bool = True
) -> pd.DataFrame:
    """Add the manifest suite's helper columns to a copy of ``df``.

    Columns a row cannot be judged on (e.g. a null method) get the passing value; the
    null itself is reported by a not-null expectation, so a row fails once, not twice.

    Args:
        df: a manifest (ideally normalised by :func:`veracity.corpus.manifest.normalize`).
        root: directory that relative ``path`` values are taken from.
        check_files: add ``_file_exists``.

    Returns:
        A copy with ``_file_exists`` (if asked), ``_method_consistent``,
        ``_identity_group``, ``_identity_n_splits``, ``_method_count``, ``_split_count``.
    """
    out = df.copy()
    if check_files and "path" in out.columns:
        resolved = mf.resolve_paths(out, root)
        exists = [
            pd.notna(p) and os.path.isfile(r) for p, r in zip(out["path"], resolved, strict=True)
        ]
        out[_FILE_EXISTS] = pd.Series(exists, index=out.index, dtype=bool)
    if {"label", "method"} <= set(out.columns):
        label = pd.to_numeric(out["label"], errors="coerce")
        method = out["method"].astype("string")
        known = label.notna() & method.notna()
        consistent = (method == mf.REAL_METHOD).fillna(False) == (label == 0).fillna(False)
        out[_METHOD_CONSISTENT] = (consistent | ~known).astype(bool)
    if {"identity", "split"} <= set(out.columns):
        ident = out["identity"].astype("string")
        src = (
            out["source_identity"]
            if "source_identity" in out.columns
            else pd.Series(pd.NA, index=out.index)
        ).astype("string")
        has = ident.notna()
        groups = mf.identity_groups(
            ident[has], src[has].astype(object).where(src[has].notna(), None)
        )
        out[_IDENTITY_GROUP] = ident.map(lambda i: groups.get(str(i)) if pd.notna(i) else pd.NA)
        out[_IDENTITY_GROUP] = out[_IDENTITY_GROUP].astype("string")
        n_splits = out.groupby(_IDENTITY_GROUP, dropna=True)["split"].transform("nunique")
        # Rows without a group (null identity) or split count as one split: the nulls have
        # their own expectations.
        out[_IDENTITY_N_SPLITS] = n_splits.fillna(1).clip(lower=1).astype(int)
    # Null methods/splits get a null count, which GX's column-map checks skip.
    if "method" in out.columns:
        out[_METHOD_COUNT] = out.groupby("method", dropna=True)["method"].transform("size")
    if "split" in out.columns:
        out[_SPLIT_COUNT] = out.groupby("split", dropna=True)["split"].transform("size")
    return out


def manifest_suite(cfg: ValidateConfig, root: Path | str) -> Suite:
    """The expectation suite for the manifest contract (DESIGN §3).

    Args:
        cfg: bounds (clips, class balance, per-method and per-split counts, switches).
        root: the manifest's directory; relative ``path`` values are resolved from it.

    Returns:
        A :class:`Suite` named ``manifest``.
    """
    gx = _gx()
    E = gx.expectations
    root = Path(root)

    def notes(text: str, *context: str) -> dict[str, Any]:
        return {"notes": text, "context": list(context)} if context else {"notes": text}

    required = list(cfg.required_splits)
    # Any contract split is allowed; the required ones must also be present (and full).
    allowed_splits = sorted(set(mf.SPLITS) | set(required))
    exps: list[Any] = [
        E.ExpectColumnToExist(column=c, meta=notes(f"required column '{c}' is present"))
        for c in mf.REQUIRED_COLUMNS
    ]
    exps += [
        E.ExpectTableRowCountToBeBetween(
            min_value=cfg.min_clips, meta=notes(f"at least {cfg.min_clips} clips")
        ),
        E.ExpectColumnValuesToNotBeNull(column="video_id", meta=notes("video_id is missing")),
        E.ExpectColumnValuesToBeUnique(column="video_id", meta=notes("duplicate video_id")),
        E.ExpectColumnValuesToNotBeNull(column="path", meta=notes("path is missing")),
        E.ExpectColumnValuesToNotBeNull(column="label", meta=notes("label is missing")),
        E.ExpectColumnValuesToBeInSet(
            column="label", value_set=[0, 1], meta=notes("label must be 0 (real) or 1 (fake)")
        ),
        # GX skips nulls in set checks, which is what the nullable modality labels need.
        E.ExpectColumnValuesToBeInSet(
            column="video_label", value_set=[0, 1], meta=notes("video_label must be 0, 1 or empty")
        ),
        E.ExpectColumnValuesToBeInSet(
            column="audio_label", value_set=[0, 1], meta=notes("audio_label must be 0, 1 or empty")
        ),
        E.ExpectColumnValuesToNotBeNull(column="split", meta=notes("split is missing")),
        E.ExpectColumnValuesToBeInSet(
            column="split",
            value_set=allowed_splits,
            meta=notes(f"split must be one of {', '.join(allowed_splits)}"),
        ),
        E.ExpectColumnDistinctValuesToContainSet(
            column="split",
            value_set=required,
            meta=notes(f"every required split is present: {', '.join(required)}"),
        ),
        E.ExpectColumnValuesToBeBetween(
            column=_SPLIT_COUNT,
            min_value=cfg.min_per_split,
            meta=notes(f"each split holds at least {cfg.min_per_split} clips", "split"),
        ),
        E.ExpectColumnValuesToNotBeNull(column="method", meta=notes("method is missing")),
        E.ExpectColumnValuesToBeInSet(
            column=_METHOD_CONSISTENT,
            value_set=[True],
            meta=notes(
                "mislabelled: method must be 'real' exactly when label == 0", "method", "label"
            ),
        ),
        E.ExpectColumnValuesToBeBetween(
            column=_METHOD_COUNT,
            min_value=cfg.min_per_method,
            max_value=cfg.max_per_method,
            meta=notes(
                f"clips per method within [{cfg.min_per_method}, {cfg.max_per_method or 'inf'}]",
                "method",
            ),
        ),
        # The mean of a 0/1 label is the fake share.
        E.ExpectColumnMeanToBeBetween(
            column="label",
            min_value=cfg.min_fake_ratio,
            max_value=cfg.max_fake_ratio,
            meta=notes(f"fake share within [{cfg.min_fake_ratio}, {cfg.max_fake_ratio}]"),
        ),
        E.ExpectColumnValuesToNotBeNull(column="identity", meta=notes("identity is missing")),
    ]
    if cfg.identity_disjoint:
        exps.append(
            E.ExpectColumnValuesToBeInSet(
                column=_IDENTITY_N_SPLITS,
                value_set=[1],
                meta=notes(
                    "identity leak: an identity group (linked via source_identity) spans splits",
                    "identity",
                    "split",
                ),
            )
        )
    if cfg.check_files:
        exps.append(
            E.ExpectColumnValuesToBeInSet(
                column=_FILE_EXISTS, value_set=[True], meta=notes("file does not exist", "path")
            )
        )

    def derive(df: pd.DataFrame) -> pd.DataFrame:
        return derive_manifest_columns(df, root, check_files=cfg.check_files)

    return Suite(
        name="manifest",
        expectations=exps,
        derive=derive,
        context_columns=("method", "label", "split", "identity", "path"),
    )


def validate_manifest(
    cfg: ValidateConfig, manifest_path: Path | str, out: Path | str
) -> SuiteReport:
    """Validate a manifest CSV and save the reports under ``out`` (stage: :mod:`veracity.stages.validate`).

    A manifest that cannot be read (missing file, missing required column, non-integer
    labels) gives a failed report whose ``error`` says why, instead of a traceback.
    The function does not raise on failure; call :meth:`SuiteReport.raise_for_failure`
    (the stage does, so the CLI exits non-zero with :meth:`SuiteReport.summary` as the message).

    Args:
        cfg: the ``validate`` section of ``params.yaml``.
        manifest_path: the manifest CSV; relative paths in it are taken from its directory.
        out: output directory for ``manifest.json``, ``manifest.html`` and ``summary.json``.

    Returns:
        The :class:`SuiteReport`.
    """
    manifest_path = Path(manifest_path)
    try:
        df = mf.read(manifest_path)
    except mf.ManifestError as exc:
        report = SuiteReport(suite_name="manifest", success=False, error=str(exc))
    else:
        report = run_suite(df, manifest_suite(cfg, manifest_path.parent), id_column="video_id")
    report.save(out)
    return report


# --------------------------------------------------------------------------- features suite

_USABLE = "_usable"
_FRAMES_OK = "_frames_ok"
_FACE_OK = "_face_ok"
_USABLE_FACE_RATIO = "_usable_face_ratio"
_AUDIO_OK = "_audio_ok"
_SPEECH_OK = "_speech_ok"
_DURATION_OK = "_duration_ok"


def derive_feature_columns(
    df: pd.DataFrame, bounds: FeatureBounds, usable_statuses: Sequence[str]
) -> pd.DataFrame:
    """Helper columns for :func:`features_suite`; unusable clips pass the per-clip checks
    (their status already says what is wrong and is counted by the failure-share check)."""
    out = df.copy()
    usable = out["status"].isin(list(usable_statuses)) if "status" in out else pd.Series(False, index=out.index)
    out[_USABLE] = usable.astype(float)

    def per_clip(cond: pd.Series) -> pd.Series:
        return (cond.fillna(False) | ~usable).astype(bool)

    num = lambda c: pd.to_numeric(out.get(c, pd.Series(float("nan"), index=out.index)), errors="coerce")  # noqa: E731
    out[_FRAMES_OK] = per_clip(num("n_frames") >= bounds.min_frames)
    out[_FACE_OK] = per_clip(num("face_ratio") >= bounds.min_face_ratio)
    out[_USABLE_FACE_RATIO] = num("face_ratio").where(usable)
    has_audio = out.get("has_audio", pd.Series(False, index=out.index)).astype(str).str.lower() == "true"
    out[_AUDIO_OK] = per_clip(has_audio) if bounds.require_audio else True
    out[_SPEECH_OK] = per_clip((num("speech_ratio") >= bounds.min_speech_ratio) | ~has_audio)
    dur = num("duration_s")
    out[_DURATION_OK] = per_clip(dur.between(bounds.min_duration_s, bounds.max_duration_s) | dur.isna())
    return out


def features_suite(bounds: FeatureBounds, usable_statuses: Sequence[str],
                   statuses: Sequence[str] = EXTRACT_STATUSES) -> Suite:
    """The expectation suite for an extracted-features index (``index.csv``).

    Args:
        bounds: the ``validate.features`` section.
        usable_statuses: statuses that count as usable clips (``extract.usable_statuses``).
        statuses: every status extraction can give (:data:`veracity.status.EXTRACT_STATUSES`,
            ``error`` included: a clip our code failed on is counted as unusable here, and
            ``veracity extract`` has already failed on it).
    """
    gx = _gx()
    E = gx.expectations

    def notes(text: str, *context: str) -> dict[str, Any]:
        return {"notes": text, "context": list(context)} if context else {"notes": text}

    exps: list[Any] = [
        E.ExpectColumnValuesToBeUnique(column="video_id", meta=notes("clip extracted twice")),
        E.ExpectColumnValuesToNotBeNull(column="status", meta=notes("clip has no status")),
        E.ExpectColumnValuesToBeInSet(column="status", value_set=list(statuses),
                                      meta=notes("unknown extraction status", "message")),
        E.ExpectColumnMeanToBeBetween(
            column=_USABLE, min_value=1.0 - bounds.max_failure_ratio,
            meta=notes(f"usable clips ({', '.join(usable_statuses)}) at least "
                       f"{1 - bounds.max_failure_ratio:.0%} of all"),
        ),
        E.ExpectColumnValuesToBeInSet(column=_FRAMES_OK, value_set=[True],
                                      meta=notes(f"usable clip has fewer than {bounds.min_frames} frames", "n_frames")),
        E.ExpectColumnValuesToBeInSet(column=_FACE_OK, value_set=[True],
                                      meta=notes(f"usable clip has a face in under {bounds.min_face_ratio:.0%} of frames",
                                                 "face_ratio")),
        E.ExpectColumnMeanToBeBetween(column=_USABLE_FACE_RATIO, min_value=bounds.min_mean_face_ratio,
                                      meta=notes(f"faces found in at least {bounds.min_mean_face_ratio:.0%} "
                                                 "of sampled frames of usable clips")),
        E.ExpectColumnValuesToBeInSet(column=_SPEECH_OK, value_set=[True],
                                      meta=notes(f"voice activity under {bounds.min_speech_ratio:.0%} of the audio",
                                                 "speech_ratio")),
        E.ExpectColumnValuesToBeInSet(column=_DURATION_OK, value_set=[True],
                                      meta=notes(f"duration outside [{bounds.min_duration_s}, {bounds.max_duration_s}] s",
                                                 "duration_s")),
    ]
    if bounds.require_audio:
        exps.append(E.ExpectColumnValuesToBeInSet(column=_AUDIO_OK, value_set=[True],
                                                  meta=notes("usable clip has no audio", "status")))

    def derive(df: pd.DataFrame) -> pd.DataFrame:
        return derive_feature_columns(df, bounds, usable_statuses)

    return Suite(name="features", expectations=exps, derive=derive, context_columns=("status", "message"))


def validate_features(
    bounds: FeatureBounds, usable_statuses: Sequence[str], statuses: Sequence[str],
    index_path: Path | str, out: Path | str,
) -> SuiteReport:
    """Validate an extraction ``index.csv`` and save reports under ``out`` (stage: :mod:`veracity.stages.validate`)."""
    index_path = Path(index_path)
    if not index_path.exists():
        report = SuiteReport(suite_name="features", success=False, error=f"features index {index_path} does not exist")
    else:
        df = pd.read_csv(index_path)
        report = run_suite(df, features_suite(bounds, usable_statuses, statuses), id_column="video_id")
    report.save(out)
    return report
