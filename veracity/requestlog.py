"""The request log: one row per analysed person, written by the service, read by monitoring.

This module owns the request log of DESIGN §3: its columns (:data:`COLUMNS`), how rows are
made from a :class:`veracity.analyzer.Report` (:func:`rows_from_report`), the files they
live in (:class:`RequestLog`) and how monitoring reads them back (:func:`read_request_log`).

Files, all in one directory:

- ``requests.sqlite``: the current file. SQLite in WAL mode with a busy timeout, so the
  service's worker processes can append at once (SQLite orders their transactions).
- ``requests-<UTC timestamp>.sqlite``: rotated files. When the current file grows past
  ``max_bytes``, it is renamed to one of these (switched out of WAL first, so it is one
  self-contained file) and a fresh current file is started; only the newest ``keep``
  rotated files are kept.
- ``requests.lock`` and ``requests.gate``: ``fcntl`` locks that keep rotation apart from
  everything else. Appends hold the lock shared (they never wait for each other); a read
  holds it shared only while it pins the files (it queries them after); rotation holds it
  exclusive, and takes the gate first so that a steady stream of appends cannot starve it.

Rows are only ever inserted (triggers refuse UPDATE and DELETE). Every column is on an
allow-list: media bytes, file paths, messages, keys and any other field of a report never
go in. Reading never raises for a damaged file: it is skipped, named in a warning and in
the frame's ``attrs["skipped"]``, so monitoring does not die on one bad file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the writers (service workers) import neither torch nor pandas for the log
    import pandas as pd

    from veracity.analyzer import Report

__all__ = [
    "COLUMNS",
    "CURRENT_NAME",
    "GATE_NAME",
    "LOCK_NAME",
    "MEDIA_COLUMNS",
    "PERSON_FACTS",
    "SCHEMA_VERSION",
    "RequestLog",
    "RequestLogError",
    "log_files",
    "read_request_log",
    "rows_from_report",
]

log = logging.getLogger(__name__)

# Bumped whenever a column is added, removed or changes meaning; stored in PRAGMA user_version.
# v2 added judged, role, model and agree (shadow mode); v3 the profile's facts that v2 did
# not keep (rms_dbfs, face_px, brightness, sharpness), so that drift monitoring sees every
# fact of the reference profile. An older current file is rotated aside on the first
# append, and read back with the newer columns empty.
SCHEMA_VERSION = 3
CURRENT_NAME = "requests.sqlite"
LOCK_NAME = "requests.lock"
GATE_NAME = "requests.gate"
_TABLE = "requests"
_ROTATED = re.compile(r"requests-\d{8}T\d{6}\.\d{6}Z\.sqlite")

# The media facts of the analyzer's ``_media_facts`` (and of the reference profile), typed.
MEDIA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("duration_s", "REAL"),
    ("fps", "REAL"),
    ("width", "INTEGER"),
    ("height", "INTEGER"),
    ("rotation", "INTEGER"),
    ("has_audio", "INTEGER"),  # 0/1; read back as a boolean
    ("audio_s", "REAL"),
    ("face_ratio", "REAL"),
    ("n_tracks", "INTEGER"),
    ("speech_ratio", "REAL"),
    ("n_frames", "INTEGER"),
    ("rms_dbfs", "REAL"),
)
# The person's facts of the reference profile (veracity.profile.FACTS) that only its face
# crops show, taken from the report's profile check of that person (NULL without a profile).
PERSON_FACTS: tuple[str, ...] = ("face_px", "brightness", "sharpness")
# Every column, in table order, with its SQLite type. Nothing else is ever stored.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "TEXT"),  # ISO-8601 UTC with milliseconds, e.g. 2026-11-21T10:30:00.123Z
    ("request_id", "TEXT"),
    ("endpoint", "TEXT"),
    ("bundle_sha256", "TEXT"),
    ("person", "INTEGER"),  # face track id; NULL for an ABSTAIN
    ("verdict", "TEXT"),
    ("reason", "TEXT"),  # why it abstained (a short code), else NULL
    ("probability", "REAL"),  # calibrated fused probability of fake; NULL for an ABSTAIN
    ("ood_score", "REAL"),  # filled once the analyzer scores out-of-distribution inputs
    ("latency_ms", "REAL"),
    *MEDIA_COLUMNS,
    *((name, "REAL") for name in PERSON_FACTS),
    ("members", "TEXT"),  # JSON {member: calibrated probability}: bundles differ in members
    ("modalities", "TEXT"),  # JSON {modality: probability}
    ("judged", "TEXT"),  # the modalities that judged, comma-separated (e.g. "video" alone); NULL for ABSTAIN
    ("role", "TEXT"),  # served (the answer) or shadow (scored beside it, never returned)
    ("model", "TEXT"),  # champion or challenger: the registry slot whose bundle wrote the row
    ("agree", "INTEGER"),  # shadow rows: 1 when its verdict is the served one's; NULL on served rows
)
_NAMES = tuple(name for name, _ in COLUMNS)
_TYPES = dict(COLUMNS)
_NOT_NULL = {"time", "request_id", "endpoint", "verdict", "members", "modalities", "role", "model"}
ROLES = ("served", "shadow")
MODELS = ("champion", "challenger")
_VERDICTS = ("FAKE", "UNCERTAIN", "REAL", "ABSTAIN")
# A reason is a code such as ``no_face``; anything else (free text could carry user data) is not stored.
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")
_SHA = re.compile(r"[0-9a-fA-F]{8,128}")
# Client-supplied ids and endpoint names are capped so they cannot bloat the log.
_MAX_ID = 200


class RequestLogError(RuntimeError):
    """The current request log file cannot be written (e.g. a newer schema version)."""


class _OlderSchema(Exception):  # noqa: N818 - control flow, never escapes append()
    """The current file was written by an older schema version: it is rotated aside."""


# --------------------------------------------------------------------------- rows


def rows_from_report(report: Report | Mapping[str, Any], *, request_id: str, endpoint: str,
                     latency_s: float | None, at: datetime | None = None, role: str = "served",
                     model: str = "champion", agree: bool | None = None) -> list[dict[str, Any]]:
    """The request-log rows of one analysis: one per person, or one for an ABSTAIN.

    Only the columns of :data:`COLUMNS` are taken from the report (never ``path``,
    ``message``, timelines or explanations).

    Args:
        report: a :class:`veracity.analyzer.Report` or its ``to_dict()``.
        request_id: the request's id (capped at 200 characters).
        endpoint: the service endpoint that answered (capped at 200 characters).
        latency_s: seconds the request took.
        at: when the request was answered (default now); naive times are taken as UTC.
        role: ``served`` (the answer) or ``shadow`` (scored beside it, not returned).
        model: ``champion`` or ``challenger``.
        agree: for a shadow row, whether its verdict is the served one's.

    Returns:
        One dict per row with the column names as keys; ``members`` and ``modalities`` are
        dicts (encoded as JSON by :meth:`RequestLog.append`).

    Raises:
        ValueError: the verdict is not one of FAKE, UNCERTAIN, REAL, ABSTAIN, or
            ``request_id``/``endpoint`` is empty.
    """
    r = _as_mapping(report)
    verdict = r.get("verdict")
    if verdict not in _VERDICTS:
        raise ValueError(f"not a verdict: {verdict!r} (expected one of {', '.join(_VERDICTS)})")
    for name, value in (("request_id", request_id), ("endpoint", endpoint)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if role not in ROLES or model not in MODELS:
        raise ValueError(f"role must be one of {ROLES} and model one of {MODELS}, got {role!r}, {model!r}")
    bundle = r.get("bundle") if isinstance(r.get("bundle"), Mapping) else {}
    sha = bundle.get("sha256")
    media = r.get("media") if isinstance(r.get("media"), Mapping) else {}
    base: dict[str, Any] = {
        "time": _iso_ms(at if at is not None else datetime.now(UTC)),
        "request_id": request_id[:_MAX_ID],
        "endpoint": endpoint[:_MAX_ID],
        "bundle_sha256": sha.lower() if isinstance(sha, str) and _SHA.fullmatch(sha) else None,
        "latency_ms": None if _real(latency_s) is None else round(_real(latency_s) * 1000.0, 3),
        "judged": None if verdict == "ABSTAIN" else _judged(r.get("judged")),
        "role": role, "model": model, "agree": None if agree is None else int(bool(agree)),
    }
    for name, kind in MEDIA_COLUMNS:
        base[name] = _coerce(media.get(name), kind)
    persons = [p for p in (r.get("persons") or []) if isinstance(p, Mapping)]
    if verdict == "ABSTAIN" or not persons:
        # ABSTAIN judges nobody: one row, person and probability NULL whatever the report says.
        abstain = verdict == "ABSTAIN"
        rows = [{**base, "person": None if abstain else _integer(r.get("person")), "verdict": verdict,
                 "reason": _reason(r.get("reason")), "probability": None if abstain else _real(r.get("probability")),
                 "ood_score": _real(r.get("ood_score", (r.get("ood") or {}).get("ood_score"))),
                 **_person_facts(r.get("ood")), "members": _member_probs(r.get("members")),
                 "modalities": _modality_probs(r.get("modalities"))}]
    else:
        rows = [{**base, "person": _integer(p.get("track")),
                 "verdict": p.get("verdict") if p.get("verdict") in _VERDICTS else verdict,
                 "reason": _reason(p.get("reason")), "probability": _real(p.get("probability")),
                 "ood_score": _real(p.get("ood_score", r.get("ood_score"))), **_person_facts(p.get("ood")),
                 "members": _member_probs(p.get("members")), "modalities": _modality_probs(p.get("modalities"))}
                for p in persons]
    return [{name: row[name] for name in _NAMES} for row in rows]


def _person_facts(ood: Any) -> dict[str, float | None]:
    facts = ood.get("facts") if isinstance(ood, Mapping) else None
    facts = facts if isinstance(facts, Mapping) else {}
    return {name: _real(facts[name].get("value")) if isinstance(facts.get(name), Mapping) else None
            for name in PERSON_FACTS}


def _judged(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)):
        return None
    names = [v for v in value if isinstance(v, str) and _REASON.fullmatch(v)]
    return ",".join(names) or None


def _as_mapping(report: Any) -> Mapping[str, Any]:
    if hasattr(report, "to_dict"):
        return report.to_dict()
    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    if isinstance(report, Mapping):
        return report
    raise TypeError(f"not a report: {type(report).__name__}")


def _iso_ms(t: datetime) -> str:
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    v = _real(value)
    return int(v) if v is not None and v.is_integer() else None


def _coerce(value: Any, kind: str) -> Any:
    return _real(value) if kind == "REAL" else _integer(value)


def _reason(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) and _REASON.fullmatch(value) else "other"


def _member_probs(members: Any) -> dict[str, float | None]:
    if not isinstance(members, Mapping):
        return {}
    out = {}
    for name, value in members.items():
        out[str(name)] = _real(value.get("probability") if isinstance(value, Mapping) else value)
    return out


def _modality_probs(modalities: Any) -> dict[str, float | None]:
    return {str(k): _real(v) for k, v in modalities.items()} if isinstance(modalities, Mapping) else {}


# --------------------------------------------------------------------------- writing


_SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
    + ", ".join(f"{n} {t}{' NOT NULL' if n in _NOT_NULL else ''}" for n, t in COLUMNS)
    + f", CHECK (verdict IN ({', '.join(repr(v) for v in _VERDICTS)}))"
    + ", CHECK (json_valid(members) AND json_valid(modalities))) STRICT",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_time ON {_TABLE}(time)",
    # Append-only is part of the schema: a monitoring report must be reproducible.
    f"CREATE TRIGGER IF NOT EXISTS {_TABLE}_no_update BEFORE UPDATE ON {_TABLE} "
    "BEGIN SELECT RAISE(ABORT, 'the request log is append-only'); END",
    f"CREATE TRIGGER IF NOT EXISTS {_TABLE}_no_delete BEFORE DELETE ON {_TABLE} "
    "BEGIN SELECT RAISE(ABORT, 'the request log is append-only'); END",
]
_INSERT = f"INSERT INTO {_TABLE} ({', '.join(_NAMES)}) VALUES ({', '.join('?' for _ in _NAMES)})"


class RequestLog:
    """Append-only request log files in ``directory`` (safe for several processes).

    Args:
        directory: where the files live (created if missing).
        max_bytes: the current file is rotated after the append that takes it past this
            size (so a file may end a little larger).
        keep: how many rotated files are kept (the oldest are deleted first).
        busy_timeout_s: how long a write waits for another process's transaction.

    Raises:
        ValueError: ``max_bytes`` is not positive or ``keep`` is negative.
    """

    def __init__(self, directory: Path | str, max_bytes: int = 64 * 2**20, keep: int = 10,
                 busy_timeout_s: float = 30.0):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self.busy_timeout_s = float(busy_timeout_s)

    @property
    def current(self) -> Path:
        """The file rows are appended to."""
        return self.directory / CURRENT_NAME

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows (from :func:`rows_from_report`) in one transaction; rotate if due.

        Returns:
            The number of rows inserted.

        Raises:
            ValueError: a row has a key that is not a column (nothing is written).
            RequestLogError: the current file was written by a newer schema version.
            sqlite3.Error: the database could not be written.
        """
        values = [_encode(row) for row in rows]  # all rows are checked before any is written
        if not values:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        size = None
        for _ in range(3):
            try:
                with _shared(self.directory):
                    con = self._connect()
                    try:
                        if self._ensure_schema(con, create=False):
                            with con:  # BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error
                                con.execute("BEGIN IMMEDIATE")
                                con.executemany(_INSERT, values)
                            size = _db_bytes(con)
                    finally:
                        con.close()
            except _OlderSchema:
                # Written by an older version: kept as a rotated file (readers fill the new
                # columns with nulls), and this version's schema starts a new current file.
                self.rotate(force=True)
                continue
            if size is not None:
                break
            # A new file. Switching to WAL fails at once (no busy wait) if another process does
            # the same, so the schema is made under the exclusive lock (rotation makes the next
            # file the same way: this runs for the very first file, or one deleted by hand).
            with _exclusive(self.directory):
                con = self._connect()
                try:
                    self._ensure_schema(con, create=True)
                finally:
                    con.close()
        else:
            raise RequestLogError(f"{self.current} keeps losing its request-log schema")
        if size > self.max_bytes:
            # The rows are committed: a failed rotation is retried by the next append, never raised.
            try:
                self.rotate()
            except (OSError, sqlite3.Error, RequestLogError) as exc:
                log.warning("request log: rotation of %s failed (retried on the next append): %s",
                            self.current, exc)
        return len(values)

    def rotate(self, force: bool = False) -> Path | None:
        """Rename the current file to ``requests-<UTC timestamp>.sqlite`` if it is past ``max_bytes``.

        Waits for the appends and reads in progress (new ones wait behind it: all of them
        are short). Does nothing, unless ``force``, when the file is small enough.

        Returns:
            The rotated file, or None when nothing was rotated.
        """
        if not self.directory.is_dir():
            return None
        with _exclusive(self.directory):
            if not self.current.is_file():
                return None
            con = self._connect()
            try:
                if not force and _db_bytes(con) <= self.max_bytes:
                    return None  # another process rotated it first
                # Leaving WAL checkpoints it: one self-contained file that readers open
                # read-only without -wal/-shm, and nothing left in a WAL to lose. SQLite
                # answers the old mode when another connection keeps it from switching.
                mode = con.execute("PRAGMA journal_mode=DELETE").fetchone()[0].lower()
                if mode != "delete":
                    raise RequestLogError(f"{self.current} could not leave WAL mode (still {mode}); "
                                          "is another program holding it open?")
            finally:
                con.close()
            target = self._rotated_path()
            os.replace(self.current, target)
            for side in ("-wal", "-shm"):  # a stale one must never be read as the new file's
                Path(f"{self.current}{side}").unlink(missing_ok=True)
            con = self._connect()  # the next append finds the schema in place
            try:
                self._ensure_schema(con, create=True)
            finally:
                con.close()
            self._prune()
            log.info("request log: rotated %s to %s", self.current.name, target.name)
            return target

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE takes the write lock up front).
        con = sqlite3.connect(self.current, timeout=self.busy_timeout_s, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        # WAL with NORMAL: no fsync per append (the log is not worth one per request); a power
        # cut may lose the last appends but never corrupts the file.
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    def _ensure_schema(self, con: sqlite3.Connection, create: bool) -> bool:
        """True when the file has this version's schema; a new file gets it if ``create``."""
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return True
        if 0 < version < SCHEMA_VERSION:
            raise _OlderSchema
        if version != 0:
            raise RequestLogError(f"{self.current} has request-log schema version {version}; "
                                  f"this code writes version {SCHEMA_VERSION}")
        if not create:
            return False
        if con.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise RequestLogError(f"{self.current}: SQLite refused WAL mode")
        with con:
            con.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return True

    def _rotated_path(self) -> Path:
        t = datetime.now(UTC)
        while True:
            path = self.directory / f"requests-{t.strftime('%Y%m%dT%H%M%S.%fZ')}.sqlite"
            if not path.exists():
                return path
            t += timedelta(microseconds=1)

    def _prune(self) -> None:
        rotated = _rotated_files(self.directory)
        for path in rotated[: max(0, len(rotated) - self.keep)]:
            path.unlink(missing_ok=True)
            log.info("request log: deleted %s (keep=%d)", path.name, self.keep)


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _encode(row: Mapping[str, Any]) -> tuple[Any, ...]:
    extra = set(row) - set(_NAMES)
    if extra:
        raise ValueError(f"not request-log columns: {', '.join(sorted(extra))}")
    missing = {n for n in _NOT_NULL - {"members", "modalities"} if row.get(n) in (None, "")}
    if missing:
        raise ValueError(f"request-log row without {', '.join(sorted(missing))}")
    out = []
    for name in _NAMES:
        value = row.get(name)
        if name == "time":
            # One fixed format: the time filters compare these strings.
            value = _iso_ms(value) if isinstance(value, datetime) else value
            if not isinstance(value, str) or not _TIME.fullmatch(value):
                raise ValueError(f"request-log time must be like 2026-11-21T10:30:00.123Z, got {value!r}")
        elif name in ("members", "modalities"):
            value = value if isinstance(value, str) else json.dumps(
                {str(k): _real(v) for k, v in (value or {}).items()}, sort_keys=True)
        elif _TYPES[name] == "REAL":
            value = _real(value)
        elif _TYPES[name] == "INTEGER":
            value = _integer(value)
        elif value is not None:
            value = str(value)
        out.append(value)
    return tuple(out)


def _db_bytes(con: sqlite3.Connection) -> int:
    # The database's size with what is still in the WAL (the main file alone lags behind).
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    return int(pages) * int(con.execute("PRAGMA page_size").fetchone()[0])


def _open_locks(directory: Path, create: bool) -> tuple[int, int] | None:
    flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    fds: list[int] = []
    try:
        for name in (GATE_NAME, LOCK_NAME):
            fds.append(os.open(directory / name, flags, 0o644))
    except OSError:
        for fd in fds:
            os.close(fd)
        if create:
            raise
        return None  # a reader of a read-only copy, or of a log never written: no rotation to fear
    return fds[0], fds[1]


@contextlib.contextmanager
def _shared(directory: Path, create: bool = True) -> Iterator[None]:
    """Hold the lock shared (appends, reads), entering through the gate.

    A rotation waiting at the gate keeps new holders out, so a steady stream of appends
    cannot starve it (``flock`` itself grants shared locks past a waiting exclusive one).
    """
    fds = _open_locks(directory, create)
    if fds is None:
        yield
        return
    gate, lock = fds
    try:
        fcntl.flock(gate, fcntl.LOCK_SH)
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        os.close(lock)  # closing releases the lock
        os.close(gate)


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold the gate and the lock exclusive (rotation, a new file's schema)."""
    fds = _open_locks(directory, create=True)
    assert fds is not None
    gate, lock = fds
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)
        os.close(gate)


# --------------------------------------------------------------------------- reading


def _rotated_files(directory: Path) -> list[Path]:
    # The timestamp in the name sorts rotated files oldest first.
    return sorted(p for p in directory.glob("requests-*.sqlite") if _ROTATED.fullmatch(p.name))


def log_files(directory: Path | str) -> list[Path]:
    """The request log's files, oldest first: rotated files by timestamp, then the current one."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    current = directory / CURRENT_NAME
    return _rotated_files(directory) + ([current] if current.is_file() else [])


def read_request_log(directory: Path | str, *, since: datetime | str | None = None,
                     until: datetime | str | None = None, last: int | None = None) -> pd.DataFrame:
    """Every row of the request log in time order, as monitoring reads it.

    Args:
        directory: the log directory (a missing one reads as an empty log).
        since: keep rows at or after this time (naive times are UTC).
        until: keep rows before this time.
        last: then keep only the most recent ``last`` rows.

    Returns:
        One row per logged person: the columns of :data:`COLUMNS` (``time`` as a UTC
        timestamp, ``has_audio`` boolean) with ``members`` expanded into ``p_<member>`` and
        ``modalities`` into ``m_<modality>`` columns (NaN where a row lacks one), plus
        ``file`` (the file it came from). ``attrs["skipped"]`` lists the files that could
        not be read (each also named in a warning); ``attrs["files"]`` those read.
    """
    if last is not None and last < 0:
        raise ValueError(f"last must be >= 0, got {last}")
    lo, hi = _utc(since), _utc(until)
    directory = Path(directory)
    sources: list[tuple[Path, sqlite3.Connection]] = []
    failed: dict[Path, BaseException] = {}
    # Under the shared lock only long enough to pin every file (rotation waits for it, not for
    # the queries): an open rotated file survives its deletion by ``keep``, and the current
    # file, which appends go on changing, is copied into memory as one consistent snapshot.
    with _shared(directory, create=False) if directory.is_dir() else contextlib.nullcontext():
        files = log_files(directory)
        for path in files:
            try:
                sources.append((path, _snapshot(path) if path.name == CURRENT_NAME else _open_ro(path)))
            except (sqlite3.DatabaseError, OSError) as exc:
                failed[path] = exc
    parts = []
    for path, con in sources:
        try:
            parts.append((path.name, *_query(con, lo, hi)))
        except sqlite3.ProgrammingError:
            raise  # our bug, not a damaged file
        except (sqlite3.DatabaseError, ValueError) as exc:
            failed[path] = exc
        finally:
            con.close()
    for path, exc in failed.items():
        log.warning("request log: skipping unreadable file %s: %s: %s", path, type(exc).__name__, exc)
    df = _frame(parts)
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    if last is not None:
        df = df.iloc[len(df) - min(last, len(df)):].reset_index(drop=True)
    df.attrs["skipped"] = [str(p) for p in files if p in failed]
    df.attrs["files"] = [str(p) for p in files if p not in failed]
    return df


def _utc(t: datetime | str | None) -> pd.Timestamp | None:
    import pandas as pd

    if t is None:
        return None
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)


def _snapshot(path: Path) -> sqlite3.Connection:
    src = _open_ro(path)
    try:
        mem = sqlite3.connect(":memory:")
        try:
            src.backup(mem)
        except BaseException:
            mem.close()
            raise
    finally:
        src.close()
    return mem


def _query(con: sqlite3.Connection, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> tuple[list[str], list[tuple]]:
    # Times are stored to the millisecond, so rounding a bound up keeps the comparison exact.
    where, params = [], []
    if lo is not None:
        where.append("time >= ?")
        params.append(_iso_ms(lo.ceil("ms").to_pydatetime()))
    if hi is not None:
        where.append("time < ?")
        params.append(_iso_ms(hi.ceil("ms").to_pydatetime()))
    sql = f"SELECT * FROM {_TABLE}" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY rowid"
    cur = con.execute(sql, params)
    rows = cur.fetchall()  # a damaged page raises here, inside the caller's try
    names = [d[0] for d in cur.description]
    missing = {"time", "members", "modalities"} - set(names)
    if missing:
        raise ValueError(f"not a request log (no {', '.join(sorted(missing))} column)")
    return names, rows


def _json_map(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _frame(parts: list[tuple[str, list[str], list[tuple]]]) -> pd.DataFrame:
    import pandas as pd

    # One frame built from all rows at once (files of another schema version may lack or add columns).
    names = list(_NAMES)
    for _, cols, _ in parts:
        names += [c for c in cols if c not in names]
    records, files = [], []
    for file, cols, rows in parts:
        if cols != names:
            where = [cols.index(n) if n in cols else None for n in names]
            rows = [tuple(None if i is None else row[i] for i in where) for row in rows]
        records += rows
        files += [file] * len(rows)
    df = pd.DataFrame.from_records(records, columns=names) if records else pd.DataFrame(columns=names)
    df["file"] = pd.Series(files, dtype=object)
    expanded = []
    for column, prefix in (("members", "p_"), ("modalities", "m_")):
        maps = [_json_map(v) for v in df[column]]
        keys = sorted({k for m in maps for k in m})
        expanded.append(pd.DataFrame({f"{prefix}{k}": pd.to_numeric(pd.Series([m.get(k) for m in maps],
                                                                               dtype=object), errors="coerce")
                                      for k in keys}, index=df.index))
    df = pd.concat([df.drop(columns=["members", "modalities"]), *expanded], axis=1)
    df["time"] = pd.to_datetime(df["time"], utc=True, format="ISO8601")
    for name, kind in COLUMNS:
        if name not in df.columns or name in ("time", "members", "modalities"):
            continue
        if name == "has_audio":
            df[name] = df[name].astype("boolean")
        elif kind == "INTEGER":
            df[name] = df[name].astype("Int64")
        elif kind == "REAL":
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
        else:
            df[name] = df[name].astype(object)
    # Rows of a v1 file were all the champion's answers.
    df["role"] = df["role"].where(df["role"].notna(), "served")
    df["model"] = df["model"].where(df["model"].notna(), "champion")
    return df
