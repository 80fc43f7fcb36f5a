"""Tests of veracity.logs: JSON lines, request ids, redaction of secrets, idempotent set-up."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from veracity.logs import (
    JsonFormatter,
    RedactingFilter,
    bind_request_id,
    configure_json_logging,
    current_request_id,
    new_request_id,
    register_secret,
)

# Secrets of each kind; none may appear in any output.
API_KEY = "vk-live-7f3a9c2e41d8b6"  # registered, as the service registers its configured keys
OTHER_KEY = "unregistered-key-5521"  # only ever under a secret-named key
BEARER = "eyJhbGciOi.J9payload.sig4u"  # only ever after "Bearer"
PASSWORD = "hunter2-correct-horse"  # only ever as password=...
COOKIE = "sess-8844aa; theme=dark"
RAW = b"\x00\x00\x00\x18ftypmp42RAW-MEDIA-BYTES"
SECRETS = [API_KEY, OTHER_KEY, BEARER, PASSWORD, "sess-8844aa", "RAW-MEDIA-BYTES", "ftypmp42"]


@pytest.fixture
def clean_root():
    """The root logger as it was: our handlers removed, filters added to others removed, level."""
    root = logging.getLogger()
    before = {h: list(h.filters) for h in root.handlers}
    level = root.level
    yield root
    # pytest swaps its own capture handlers between phases: only what these tests added goes.
    for h in list(root.handlers):
        if isinstance(h.formatter, JsonFormatter):
            root.removeHandler(h)
            h.close()
        else:
            h.filters[:] = [f for f in h.filters if not isinstance(f, RedactingFilter) or f in before.get(h, [])]
    root.setLevel(level)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _log_every_kind_of_secret(log: logging.Logger) -> None:
    log.warning("calling upstream with key %s", API_KEY)  # in args
    log.warning(f"configured key is {API_KEY}")  # in the message itself
    log.warning("request headers", extra={"api_key": OTHER_KEY, "headers": {"Authorization": f"Bearer {BEARER}",
                                                                            "X-API-Key": OTHER_KEY, "Cookie": COOKIE},
                                          "note": f"retried with {API_KEY}"})
    log.warning("raw header line: Authorization: Bearer %s", BEARER)
    log.warning(f"login failed for password={PASSWORD} cookie: {COOKIE}")
    log.warning("upload head %r", RAW, extra={"payload": bytearray(RAW), "view": memoryview(RAW)})
    try:
        raise RuntimeError(f"upstream refused key {API_KEY} with api_key={OTHER_KEY}")
    except RuntimeError:
        log.exception("analysis failed")


def _assert_redacted(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    lines = _lines(text)
    assert len(lines) == 7  # every record got through, redacted rather than dropped
    by_msg = {line["message"]: line for line in lines}
    assert "calling upstream with key ***" in by_msg and "configured key is ***" in by_msg
    headers = by_msg["request headers"]
    assert headers["api_key"] == "***" and headers["note"] == "retried with ***"
    assert headers["headers"] == {"Authorization": "***", "X-API-Key": "***", "Cookie": "***"}
    assert "raw header line: Authorization: *** ***" in by_msg  # scheme and credential both gone
    assert "login failed for password=*** cookie: ***" in by_msg
    upload = by_msg[f"upload head '<{len(RAW)} bytes>'"]
    assert upload["payload"] == upload["view"] == f"<{len(RAW)} bytes>"
    failed = by_msg["analysis failed"]
    assert failed["level"] == "ERROR"
    assert "RuntimeError: upstream refused key *** with api_key=***" in failed["exc"]


def test_lines_are_json_with_the_standard_fields(clean_root: logging.Logger) -> None:
    buf = io.StringIO()
    configure_json_logging(level="DEBUG", stream=buf)
    logging.getLogger("veracity.svc").debug("scored %s people in %.1f s", 3, 1.25, extra={"n_frames": 96})
    logging.getLogger("veracity.svc").info("not shown below INFO? shown: level is DEBUG")
    lines = _lines(buf.getvalue())
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "DEBUG" and first["logger"] == "veracity.svc"
    assert first["message"] == "scored 3 people in 1.2 s" and first["n_frames"] == 96
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert "request_id" not in first and "exc" not in first


def test_level_filters_records(clean_root: logging.Logger) -> None:
    buf = io.StringIO()
    configure_json_logging(level="WARNING", stream=buf)
    logging.getLogger("veracity.svc").info("dropped")
    logging.getLogger("veracity.svc").warning("kept")
    assert [line["message"] for line in _lines(buf.getvalue())] == ["kept"]


def test_request_id_only_inside_a_bound_block(clean_root: logging.Logger) -> None:
    buf = io.StringIO()
    configure_json_logging(stream=buf)
    log = logging.getLogger("veracity.svc")
    log.info("before")
    with bind_request_id("req-outer") as outer:
        log.info("outer")
        with bind_request_id() as inner:
            log.info("inner")
            assert current_request_id() == inner
        log.info("outer again")
    log.info("after")
    assert outer == "req-outer" and re.fullmatch(r"[0-9a-f]{32}", inner)
    assert current_request_id() is None
    got = [(line["message"], line.get("request_id")) for line in _lines(buf.getvalue())]
    assert got == [("before", None), ("outer", "req-outer"), ("inner", inner), ("outer again", "req-outer"),
                   ("after", None)]
    assert new_request_id() != new_request_id()


@pytest.mark.parametrize("sink", ["stream", "file"])
def test_secrets_never_reach_the_output(clean_root: logging.Logger, tmp_path: Path, sink: str) -> None:
    register_secret(API_KEY)
    buf = io.StringIO()
    file = tmp_path / "logs" / "service.jsonl"
    configure_json_logging(stream=buf, file=file if sink == "file" else None)
    _log_every_kind_of_secret(logging.getLogger("veracity.svc"))
    _assert_redacted(file.read_text() if sink == "file" else buf.getvalue())


def test_a_handler_installed_before_is_redacted_too(clean_root: logging.Logger) -> None:
    register_secret(API_KEY)
    earlier = io.StringIO()
    handler = logging.StreamHandler(earlier)  # e.g. a framework's own handler
    clean_root.addHandler(handler)
    try:
        configure_json_logging(stream=io.StringIO())
        logging.getLogger("veracity.svc").warning("key %s, token=%s", API_KEY, OTHER_KEY)
    finally:
        clean_root.removeHandler(handler)
    assert earlier.getvalue().strip() == "key ***, token=***"


def test_a_bad_log_call_neither_raises_nor_leaks(clean_root: logging.Logger, capsys: pytest.CaptureFixture) -> None:
    register_secret(API_KEY)
    buf = io.StringIO()
    configure_json_logging(stream=buf)
    logging.getLogger("veracity.svc").warning("count %d", API_KEY)  # wrong type: logging would print the args
    (line,) = _lines(buf.getvalue())
    assert line["message"].startswith("count %d") and "TypeError" in line["message"]
    assert API_KEY not in buf.getvalue() and API_KEY not in capsys.readouterr().err


def test_long_strings_are_cut(clean_root: logging.Logger) -> None:
    buf = io.StringIO()
    configure_json_logging(stream=buf)
    logging.getLogger("veracity.svc").info("x" * 10_000, extra={"blob": "y" * 5000})
    (line,) = _lines(buf.getvalue())
    assert line["message"].startswith("x" * 2000) and "8000 more characters" in line["message"]
    assert len(line["message"]) < 2100 and len(line["blob"]) < 2100


def test_register_secret_refuses_short_values() -> None:
    with pytest.raises(ValueError):
        register_secret("abc")


def test_configuring_twice_does_not_duplicate(clean_root: logging.Logger, tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    file = tmp_path / "service.jsonl"
    configure_json_logging(stream=first, file=file)
    handlers = configure_json_logging(stream=second, file=file)
    ours = [h for h in clean_root.handlers if isinstance(h.formatter, JsonFormatter)]
    assert ours == handlers and len(handlers) == 2
    logging.getLogger("veracity.svc").warning("once")
    assert first.getvalue() == ""
    assert [line["message"] for line in _lines(second.getvalue())] == ["once"]
    assert [line["message"] for line in _lines(file.read_text())] == ["once"]
    for h in clean_root.handlers:
        assert sum(isinstance(f, RedactingFilter) for f in h.filters) == 1


def test_rotating_file_keeps_backups_of_json_lines(clean_root: logging.Logger, tmp_path: Path) -> None:
    register_secret(API_KEY)
    file = tmp_path / "service.jsonl"
    configure_json_logging(stream=io.StringIO(), file=file, max_bytes=600, backups=2)
    for i in range(60):
        logging.getLogger("veracity.svc").info("request %d with key %s", i, API_KEY)
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == ["service.jsonl", "service.jsonl.1", "service.jsonl.2"]
    lines = [line for p in files for line in _lines(p.read_text())]
    assert all(p.stat().st_size <= 600 for p in files)
    assert lines and all(line["message"].endswith("with key ***") for line in lines)
    assert any(line["message"].startswith("request 59 ") for line in _lines(file.read_text()))
