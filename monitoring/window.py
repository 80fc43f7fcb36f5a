"""A window of the request log as monitoring reads it: every row accounted for, checked on the way in.

This module owns what the monitor does with the log's files before any statistics: it reads
each file's rows as SQLite stored them (:func:`read_raw`: nothing coerced, each row named
``<file>#<rowid>``, a file that cannot be read named with the reason), checks them with a
Great Expectations suite on the request log's schema and value ranges
(:func:`request_log_suite`, run by the project's GX runner :func:`veracity.validation.run_suite`),
and types the rows that pass (:func:`read_window`). A row at fault is never dropped in
silence: it is listed with the expectations it failed, and the counts add up
(``read = used + at_fault``). A damaged, truncated or foreign file is skipped and named;
it never stops the monitor.

Window: ``since``/``until`` (UTC times) and then ``last`` (the most recent rows); the
monitor judges the ``served`` rows (not a challenger's shadow answers).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from veracity.decision import VERDICTS
from veracity.profile import FACTS
from veracity.requestlog import COLUMNS, MODELS, ROLES, log_files
from veracity.validation import Suite, SuiteReport, run_suite

ROW_ID = "row"  # "<file>#<rowid>": names a row in every report
_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
_REASON = r"^[a-z][a-z0-9_]{0,63}$"
_TYPES = dict(COLUMNS)
_REQUIRED = ("time", "request_id", "endpoint", "verdict", "members", "modalities")
# Value ranges beyond the type: what a row of a working service can hold.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "probability": (0.0, 1.0), "ood_score": (0.0, None), "latency_ms": (0.0, None), "duration_s": (0.0, None),
    "fps": (0.0, 1000.0), "width": (1, None), "height": (1, None), "audio_s": (0.0, None),
    "face_ratio": (0.0, 1.0), "speech_ratio": (0.0, 1.0), "n_tracks": (0, None), "n_frames": (0, None),
    "rms_dbfs": (-200.0, 10.0), "face_px": (0.0, None), "brightness": (0.0, 255.0), "sharpness": (0.0, None),
}
_TYPE_OK = "_types_ok"
_BAD_TYPES = "_bad_types"
_SCORES_OK = "_scores_ok"


class WindowError(ValueError):
    """A log that cannot be monitored at all (no such file or folder); the message says why."""


@dataclass
class Window:
    """The rows of one window and what happened to the others.

    Attributes:
        rows: the served rows that passed the checks, typed (``time`` UTC, numbers float)
            with ``members`` expanded into ``p_<member>`` columns and :data:`ROW_ID`.
        read: rows read in the window (every role; ``at_fault`` included).
        at_fault: ``{row id: [what it failed]}`` for rows left out.
        skipped: ``{file: why}`` for files that could not be read.
        validation: the GX suite's report (None for an empty window).
        shadow: shadow rows in the window (scored beside the served answer, not judged here).
    """

    rows: pd.DataFrame
    read: int = 0
    at_fault: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    validation: SuiteReport | None = None
    shadow: int = 0

    def accounting(self) -> dict[str, Any]:
        """The counts for a summary: read = used + at fault + shadow."""
        return {"read": self.read, "used": len(self.rows), "at_fault": len(self.at_fault), "shadow": self.shadow,
                "files_skipped": self.skipped,
                "rows_at_fault": dict(list(self.at_fault.items())[:50])}


def read_raw(log: Path | str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every row of a request-log folder (or one ``.sqlite`` file) as stored, and the files skipped.

    Values are what SQLite holds (text, integer, real, blob or None), columns by name
    (a file of an older schema lacks the newer ones); :data:`ROW_ID` names each row.

    Raises:
        WindowError: ``log`` does not exist.
    """
    log = Path(log)
    if log.is_dir():
        files = log_files(log)
    elif log.is_file():
        files = [log]
    else:
        raise WindowError(f"no request log at {log}")
    frames, skipped = [], {}
    for path in files:
        try:
            con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            try:
                cur = con.execute("SELECT rowid AS _rowid, * FROM requests ORDER BY rowid")
                rows = cur.fetchall()
                names = [d[0] for d in cur.description]
            finally:
                con.close()
        except (sqlite3.DatabaseError, OSError) as exc:
            skipped[str(path)] = f"{type(exc).__name__}: {exc}"
            continue
        df = pd.DataFrame(rows, columns=names, dtype=object)  # values as SQLite gave them (no int -> float)
        df.insert(0, ROW_ID, [f"{path.name}#{r}" for r in df.pop("_rowid")])
        frames.append(df)
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[ROW_ID])
    for name, _ in COLUMNS:
        if name not in raw.columns:
            raw[name] = pd.Series([None] * len(raw), dtype=object)
    return raw, skipped


def _type_ok(value: Any, kind: str) -> bool:
    if value is None:
        return True
    if kind == "TEXT":
        return isinstance(value, str)
    if kind == "INTEGER":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _scores_ok(text: Any) -> bool:
    """``members``: a JSON object of probabilities in [0, 1] (or null for a member that did not judge)."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return False
    return isinstance(value, dict) and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0)
        for v in value.values())


def derive_columns(raw: pd.DataFrame) -> pd.DataFrame:
    """``raw`` with the helper columns the suite checks (types per row, parsed scores) and the
    numeric columns as numbers where they are numbers (so range checks read them)."""
    df = raw.copy()
    bad = [[n for n, kind in COLUMNS if not _type_ok(row.get(n), kind)] for row in raw.to_dict("records")]
    df[_BAD_TYPES] = [", ".join(b) for b in bad]
    df[_TYPE_OK] = [not b for b in bad]
    df[_SCORES_OK] = [_scores_ok(v) for v in raw["members"]]
    for name in _RANGES:
        df[name] = pd.to_numeric(raw[name].map(lambda v: v if _type_ok(v, "REAL") else None), errors="coerce")
    return df


def request_log_suite() -> Suite:
    """The GX suite of the request log (schema v3): types, required columns, codes and ranges."""
    from veracity.validation import _gx

    E = _gx().expectations

    def notes(text: str, *context: str) -> dict[str, Any]:
        return {"notes": text, "context": list(context)} if context else {"notes": text}

    exps: list[Any] = [
        E.ExpectColumnValuesToBeInSet(column=_TYPE_OK, value_set=[True],
                                      meta=notes("a value of the wrong type for its column", _BAD_TYPES)),
        *(E.ExpectColumnValuesToNotBeNull(column=c, meta=notes(f"{c} missing")) for c in _REQUIRED),
        E.ExpectColumnValuesToMatchRegex(column="time", regex=_TIME,
                                         meta=notes("time not ISO-8601 UTC with milliseconds")),
        E.ExpectColumnValuesToBeInSet(column="verdict", value_set=list(VERDICTS), meta=notes("unknown verdict")),
        E.ExpectColumnValuesToMatchRegex(column="reason", regex=_REASON, meta=notes("reason is not a short code")),
        E.ExpectColumnValuesToBeInSet(column="role", value_set=list(ROLES), meta=notes("unknown role")),
        E.ExpectColumnValuesToBeInSet(column="model", value_set=list(MODELS), meta=notes("unknown model slot")),
        E.ExpectColumnValuesToBeInSet(column=_SCORES_OK, value_set=[True],
                                      meta=notes("members is not a JSON object of probabilities in [0, 1]")),
        *(E.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi,
                                          meta=notes(f"{c} outside [{lo}, {hi if hi is not None else 'inf'}]"))
          for c, (lo, hi) in _RANGES.items()),
    ]
    return Suite(name="request_log", expectations=exps, derive=derive_columns, context_columns=(_BAD_TYPES,))


def _faults(report: SuiteReport, frame: pd.DataFrame) -> dict[str, list[str]]:
    """Every row id each failed expectation names (the runner's summary keeps only a sample)."""
    out: dict[str, list[str]] = {}
    for res in report.gx_result.get("results", []):
        if res.get("success"):
            continue
        config = res.get("expectation_config", {})
        what = (config.get("meta") or {}).get("notes") or config.get("type", "?")
        for row in (res.get("result") or {}).get("unexpected_index_list") or []:
            rid = row.get(ROW_ID) if isinstance(row, dict) else frame[ROW_ID].iloc[int(row)]
            out.setdefault(str(rid), []).append(what)
    return out


def typed(raw: pd.DataFrame) -> pd.DataFrame:
    """Rows that passed the suite, typed: numbers as floats, ``time`` UTC, ``p_<member>`` columns."""
    df = pd.DataFrame({ROW_ID: raw[ROW_ID].astype(str)})
    df["time"] = pd.to_datetime(raw["time"], utc=True, format="ISO8601")
    for name, kind in COLUMNS:
        if name in ("time", "members", "modalities"):
            continue
        df[name] = pd.to_numeric(raw[name], errors="coerce") if kind != "TEXT" else raw[name]
    members = [json.loads(v) for v in raw["members"]]
    for m in sorted({k for d in members for k in d}):
        df[f"p_{m}"] = pd.to_numeric(pd.Series([d.get(m) for d in members], index=raw.index, dtype=object))
    for fact in FACTS:  # every fact of the profile, present or not in this file's schema
        df[fact] = pd.to_numeric(df.get(fact), errors="coerce") if fact in df else float("nan")
    return df.reset_index(drop=True)


def read_window(log: Path | str, *, since: Any = None, until: Any = None, last: int | None = None) -> Window:
    """The served rows of a window of the log, checked (see the module docstring).

    Rows whose time cannot be read are at fault and cannot be placed in a window: they are
    reported with every window.

    Raises:
        WindowError: no log at ``log``, or ``last`` is negative.
    """
    if last is not None and last < 0:
        raise WindowError(f"last must be >= 0, got {last}")
    raw, skipped = read_raw(log)
    when = pd.to_datetime(raw["time"].where(raw["time"].map(lambda v: isinstance(v, str) and
                                                                    re.fullmatch(_TIME[1:-1], v) is not None)),
                          utc=True, format="ISO8601", errors="coerce")
    keep = when.notna()
    for bound, op in ((since, "ge"), (until, "lt")):
        if bound is not None:
            ts = pd.Timestamp(bound)
            ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
            keep &= getattr(when, op)(ts)
    order = when[keep].sort_values(kind="stable").index
    if last is not None:
        order = order[len(order) - min(last, len(order)):]
    raw = pd.concat([raw.loc[order], raw[when.isna()]])  # undated rows are at fault in every window
    if raw.empty:
        return Window(rows=typed(raw), skipped=skipped)
    report = run_suite(raw, request_log_suite(), id_column=ROW_ID)
    at_fault = _faults(report, raw)
    good = raw[~raw[ROW_ID].isin(at_fault)]
    served = good[good["role"] == "served"]
    return Window(rows=typed(served), read=len(raw), at_fault=at_fault, skipped=skipped, validation=report,
                  shadow=len(good) - len(served))
