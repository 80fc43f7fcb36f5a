"""Structured logging for the service and its workers: JSON lines, request ids, redaction.

This module owns how Veracity's processes log when they run as a service:

- :func:`configure_json_logging` puts one JSON object per line on a stream (and, if asked,
  a rotating file): ``time`` (UTC, ms), ``level``, ``logger``, ``message``, ``request_id``
  when one is bound, every ``extra=`` field, ``exc`` for an exception's traceback.
- :func:`bind_request_id` binds a request id to the current context
  (:class:`contextvars.ContextVar`, so threads and asyncio tasks each see their own) and
  every record logged inside carries it.
- :class:`RedactingFilter`, installed on every handler, removes secrets before any handler
  formats a record: values of secret-named keys (api keys, authorization, tokens,
  passwords, cookies...), ``Bearer``/``Basic`` credentials, every string registered with
  :func:`register_secret` (the service's API keys), raw bytes (never media in a log line),
  in the message, its arguments, extra fields and exception text; very long strings are
  cut. The request log (:mod:`veracity.requestlog`) is separate: it holds no free text.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import logging.handlers
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "bind_request_id",
    "configure_json_logging",
    "current_request_id",
    "new_request_id",
    "redact_text",
    "register_secret",
]

REDACTED = "***"
# A registered secret shorter than this would blank out ordinary words in every line.
MIN_SECRET_LEN = 4

_REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("veracity_request_id", default=None)
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_HANDLER_MARK = "_veracity_json_handler"
_DONE_MARK = "_veracity_redacted"

# A key (in a mapping, or ``key=value`` / ``key: value`` in text) whose value is a secret.
# Deliberately broad ("n_tokens" is redacted too): a redacted count costs less than a leaked key.
_SECRET_WORDS = r"api_?key|apikey|authorization|token|secret|password|passwd|cookie|credential"
_SECRET_KEY = re.compile(rf"(?:^|_)(?:{_SECRET_WORDS})", re.IGNORECASE)
_KEY_IN_TEXT = rf"[\w-]*?(?:{_SECRET_WORDS.replace('_', '[-_]')})[\w-]*"
# ``key = value`` with the value quoted, or unquoted up to a separator; a cookie's value runs to
# the end of the line (it is a list of ``name=value;`` pairs).
_KV_COOKIE = re.compile(r"""(?i)(["']?\b[\w-]*cookie[\w-]*["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\n"'}\]]+)""")
_KV = re.compile(rf"""(?i)(["']?\b{_KEY_IN_TEXT}["']?\s*[:=]\s*)("[^"]*"|'[^']*'|[^\s,;&"'}}\]]+)""")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_BASIC = re.compile(r"\b(Basic)\s+[A-Za-z0-9+/]{8,}=*")

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


# --------------------------------------------------------------------------- request ids


def new_request_id() -> str:
    """A fresh request id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The request id bound to the current context, or None."""
    return _REQUEST_ID.get()


@contextlib.contextmanager
def bind_request_id(request_id: str | None = None) -> Iterator[str]:
    """Bind a request id (a new one if None) to every record logged inside the block.

    Yields:
        The bound id. The previous binding comes back on exit (blocks nest).
    """
    rid = request_id or new_request_id()
    token = _REQUEST_ID.set(rid)
    try:
        yield rid
    finally:
        _REQUEST_ID.reset(token)


# --------------------------------------------------------------------------- redaction


def register_secret(value: str) -> None:
    """Redact every occurrence of ``value`` from log records from now on (e.g. an API key).

    Raises:
        ValueError: ``value`` is shorter than 4 characters (it would blank ordinary text).
    """
    global _secrets_re
    if not isinstance(value, str) or len(value) < MIN_SECRET_LEN:
        raise ValueError(f"a secret to redact must be a string of at least {MIN_SECRET_LEN} characters")
    with _secrets_lock:
        _secrets.add(value)
        # Longest first, so a secret containing another is replaced whole.
        _secrets_re = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def _is_secret_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    # camelCase and dashes to snake_case: "apiKey", "X-API-Key" and "accessToken" all match.
    return bool(_SECRET_KEY.search(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).replace("-", "_")))


def redact_text(text: str, max_len: int | None = 2000) -> str:
    """``text`` without registered secrets, credentials or secret ``key=value`` values, cut to ``max_len``."""
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    text = _BASIC.sub(rf"\1 {REDACTED}", text)
    text = _KV_COOKIE.sub(rf"\1{REDACTED}", text)
    text = _KV.sub(rf"\1{REDACTED}", text)
    if max_len is not None and len(text) > max_len:  # cut after redacting: no half secret survives
        text = f"{text[:max_len]}...[{len(text) - max_len} more characters]"
    return text


def _nbytes(value: bytes | bytearray | memoryview) -> str:
    return f"<{value.nbytes if isinstance(value, memoryview) else len(value)} bytes>"


class RedactingFilter(logging.Filter):
    """Removes secrets and raw bytes from a record before any handler formats it.

    The record is changed in place (every handler after this one sees the redacted
    record): the message is formatted with redacted arguments and redacted again as text,
    extra fields are redacted (values of secret-named keys become ``***``), the exception
    and stack text are redacted, and strings longer than ``max_len`` are cut.
    A record is never dropped, and the filter never raises.

    Args:
        max_len: longest message or string field kept (characters).
        max_exc_len: longest exception or stack text kept.
    """

    def __init__(self, max_len: int = 2000, max_exc_len: int = 20000):
        super().__init__()
        self.max_len, self.max_exc_len = max_len, max_exc_len

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _DONE_MARK, False):
            return True
        try:
            self._redact(record)
        except Exception as exc:  # noqa: BLE001 - logging must go on, and never with the raw record
            record.msg = f"<log record withheld: redaction failed with {type(exc).__name__}>"
            record.args, record.exc_info, record.exc_text, record.stack_info = None, None, None, None
            for key in [k for k in vars(record) if k not in _STANDARD and not k.startswith("_")]:
                delattr(record, key)
        setattr(record, _DONE_MARK, True)
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        msg = record.msg
        if isinstance(msg, bytes | bytearray | memoryview):
            msg = _nbytes(msg)
        elif not isinstance(msg, str):
            msg = str(msg)
        if record.args:
            try:
                msg = msg % self._scrub(record.args, for_args=True)
            except Exception as exc:  # noqa: BLE001 - logging's own error path would print the raw args
                msg = f"{msg} <arguments not formatted: {type(exc).__name__}>"
        record.msg, record.args = redact_text(msg, self.max_len), None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            # Handlers format exc_text; the live exception (and its secrets) is dropped.
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, self.max_exc_len)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, self.max_exc_len)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, REDACTED if _is_secret_key(key) else self._scrub(value))

    def _scrub(self, value: Any, for_args: bool = False, depth: int = 0) -> Any:
        if isinstance(value, str):
            return redact_text(value, self.max_len)
        if isinstance(value, bytes | bytearray | memoryview):
            return _nbytes(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth > 8:
            return "<...>"
        if isinstance(value, Mapping):
            return {k: REDACTED if _is_secret_key(k) else self._scrub(v, for_args, depth + 1) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self._scrub(v, for_args, depth + 1) for v in value)
        if isinstance(value, list | set | frozenset):
            return [self._scrub(v, for_args, depth + 1) for v in value]
        # An argument keeps its type (``%d`` still formats it; the text is redacted after);
        # an extra field becomes its redacted text (its repr could carry a secret).
        return value if for_args else redact_text(str(value), self.max_len)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Read when the record is made, in the caller's context (a handler may format later).
        # Ours wins over a request_id a framework's filter put there first (BentoML sets its
        # own numeric one), which is kept under another name.
        rid = _REQUEST_ID.get()
        if rid is not None:
            other = getattr(record, "request_id", None)
            if other is not None and other != rid:
                record.framework_request_id = other
            record.request_id = rid
        return True


# --------------------------------------------------------------------------- formatting


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[f"extra_{key}" if key in out else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_json_logging(level: int | str = "INFO", file: Path | str | None = None,
                           max_bytes: int = 10 * 2**20, backups: int = 5,
                           stream: TextIO | None = None) -> list[logging.Handler]:
    """Send every log record to ``stream`` (and ``file``) as JSON lines, redacted.

    Idempotent: the handlers of an earlier call are removed (and closed) first, so calling
    it again changes the settings without duplicating lines. Handlers already on the root
    logger from elsewhere are kept and get a :class:`RedactingFilter` too.

    Args:
        level: the root logger's level.
        file: also write to this file, rotated at ``max_bytes`` with ``backups`` old files
            (one file per process: rotation is not safe across processes).
        max_bytes: size at which ``file`` is rotated.
        backups: rotated copies of ``file`` kept.
        stream: where lines go (default ``sys.stderr`` at the time of the call).

    Returns:
        The handlers installed.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(stream if stream is not None else sys.stderr)]
    if file is not None:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        handler.addFilter(_RequestIdFilter())
        handler.addFilter(RedactingFilter())
        setattr(handler, _HANDLER_MARK, True)
    for handler in root.handlers:  # a handler that runs before ours must not see secrets either
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    return handlers
