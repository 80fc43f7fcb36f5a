"""Weights outside the registry (veracity.weights, `veracity weights`): fetched resumably
from a real local HTTP server, kept only when the sha256 matches; files and bundles verified."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from veracity import weights
from veracity.weights import ChecksumMismatch, WeightsError, fetch, verify

DATA = np.random.default_rng(7).bytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
OTHER_SHA = hashlib.sha256(b"something else").hexdigest()


@dataclass
class Behaviour:
    """What the test server does; ``requests`` records what it was asked and answered."""

    drop_after: int | None = None  # first request: send this many body bytes, then hang up
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    first_status: int | None = None  # first request: answer this error status instead
    requests: list[dict] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold a server thread past this

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        b: Behaviour = self.server.behaviour  # type: ignore[attr-defined]
        first = not b.requests
        rec = {"path": self.path, "range": self.headers.get("Range"), "status": None, "sent": 0}
        b.requests.append(rec)
        if self.path != "/weights.bin":
            return self._error(rec, 404)
        if first and b.first_status:
            return self._error(rec, b.first_status)
        start = 0
        if rec["range"] and not b.ignore_range:
            start = int(rec["range"].removeprefix("bytes=").split("-")[0])
            if start >= len(DATA):
                rec["status"] = 416  # recorded before answering: the client may be done first
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(DATA)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = DATA[start:]
        rec["status"] = 206 if start else 200
        self.send_response(rec["status"])
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.send_header("Content-Length", str(len(body)))  # the full length even when we hang up early
        if first and b.drop_after is not None:
            body = body[: b.drop_after]
        rec["sent"] = len(body)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _error(self, rec: dict, status: int) -> None:
        rec["status"] = status
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@dataclass
class Server:
    base: str
    behaviour: Behaviour

    @property
    def url(self) -> str:
        return f"{self.base}/weights.bin"


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.behaviour = Behaviour()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", httpd.behaviour)  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch) -> None:
    monkeypatch.setattr(weights, "_BACKOFF_S", 0.0)


def _fetch(url: str, dest: Path, sha: str = SHA, **kw) -> Path:
    return fetch(url, dest, sha, progress=False, chunk=16_384, timeout=5, **kw)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ fetch


def test_fresh_download_is_verified_and_named_from_the_url(server: Server, tmp_path: Path) -> None:
    path = _fetch(server.url, tmp_path)  # a directory: the file is named after the URL
    assert path == tmp_path / "weights.bin"
    assert path.read_bytes() == DATA
    assert _leftovers(tmp_path) == ["weights.bin"]  # no .part left behind
    assert [(r["range"], r["status"]) for r in server.behaviour.requests] == [(None, 200)]


def test_mismatch_is_refused_and_leaves_no_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    with pytest.raises(ChecksumMismatch) as err:
        _fetch(server.url, dest, OTHER_SHA)
    assert f"expected {OTHER_SHA}" in str(err.value) and f"got {SHA}" in str(err.value)
    assert _leftovers(tmp_path) == []


def test_interrupted_transfer_is_resumed_with_a_range_request(server: Server, tmp_path: Path) -> None:
    server.behaviour.drop_after = 100_000
    dest = tmp_path / "w.bin"
    assert _fetch(server.url, dest, retries=1) == dest
    assert dest.read_bytes() == DATA
    reqs = server.behaviour.requests
    assert [(r["range"], r["status"], r["sent"]) for r in reqs] == [
        (None, 200, 100_000), ("bytes=100000-", 206, len(DATA) - 100_000)]
    assert _leftovers(tmp_path) == ["w.bin"]


def test_part_left_by_an_earlier_run_is_resumed(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(DATA[:123_456])
    _fetch(server.url, dest)
    assert dest.read_bytes() == DATA
    assert [(r["range"], r["sent"]) for r in server.behaviour.requests] == [("bytes=123456-", len(DATA) - 123_456)]


def test_server_ignoring_range_means_starting_over(server: Server, tmp_path: Path) -> None:
    server.behaviour.ignore_range = True
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"\0" * 50_000)  # a prefix that appending would keep
    _fetch(server.url, dest)
    assert dest.read_bytes() == DATA
    assert [(r["range"], r["status"]) for r in server.behaviour.requests] == [("bytes=50000-", 200)]


def test_complete_part_answered_416_is_kept(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(DATA)
    _fetch(server.url, dest)
    assert dest.read_bytes() == DATA and _leftovers(tmp_path) == ["w.bin"]
    assert [r["status"] for r in server.behaviour.requests] == [416]


def test_present_dest_is_not_downloaded_again_unless_it_differs(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.bin"
    dest.write_bytes(DATA)
    assert _fetch(server.url, dest) == dest
    assert server.behaviour.requests == []
    dest.write_bytes(b"stale")
    _fetch(server.url, dest)
    assert dest.read_bytes() == DATA and len(server.behaviour.requests) == 1


def test_http_error_status_is_named_and_not_retried(server: Server, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="HTTP 404") as err:
        _fetch(f"{server.base}/missing.bin", tmp_path / "w.bin")
    assert not isinstance(err.value, ChecksumMismatch)
    assert len(server.behaviour.requests) == 1
    assert _leftovers(tmp_path) == []


def test_server_error_is_retried(server: Server, tmp_path: Path) -> None:
    server.behaviour.first_status = 503
    _fetch(server.url, tmp_path / "w.bin", retries=1)
    assert [r["status"] for r in server.behaviour.requests] == [503, 200]
    assert (tmp_path / "w.bin").read_bytes() == DATA


def test_network_error_after_retries_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WeightsError, match=r"after 2 attempt\(s\): network error") as err:
        _fetch(f"http://127.0.0.1:{port}/weights.bin", tmp_path / "w.bin", retries=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", ["abc", "g" * 64, SHA[:-1], SHA + "0", ""])
def test_malformed_sha256_is_refused_before_any_request(server: Server, tmp_path: Path, bad: str) -> None:
    with pytest.raises(WeightsError, match="64 hex digits"):
        _fetch(server.url, tmp_path / "w.bin", bad)
    assert server.behaviour.requests == []


def test_uppercase_sha256_and_file_urls_are_accepted(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    out = tmp_path / "out"
    out.mkdir()
    path = _fetch(src.as_uri(), out, SHA.upper())
    assert path == out / "src.bin" and path.read_bytes() == DATA


def test_unsupported_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="scheme"):
        _fetch("ftp://example.invalid/w.bin", tmp_path / "w.bin")


# ------------------------------------------------------------------ verify


def _bundle(root: Path) -> Path:
    from veracity.bundle import BUNDLE_FORMAT, BUNDLE_JSON, BUNDLE_VERSION

    (root / "members").mkdir(parents=True)
    files = {"members/a.safetensors": b"weights of a", "members/b.onnx": b"graph of b"}
    for rel, content in files.items():
        (root / rel).write_bytes(content)
    spec = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "files": {rel: hashlib.sha256(c).hexdigest() for rel, c in files.items()}}
    (root / BUNDLE_JSON).write_text(json.dumps(spec))
    return root


def test_verify_file_reports_sha256_and_size_and_refuses_a_mismatch(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(DATA)
    assert verify(f) == {"path": str(f), "kind": "file", "sha256": SHA, "size": len(DATA), "checked": False}
    assert verify(f, SHA)["checked"] is True
    with pytest.raises(ChecksumMismatch, match=f"expected {OTHER_SHA}, got {SHA}"):
        verify(f, OTHER_SHA)
    with pytest.raises(WeightsError, match="does not exist"):
        verify(tmp_path / "nothing.bin")


def test_verify_bundle_names_the_tampered_file(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "bundle")
    res = verify(root)
    assert res["kind"] == "bundle" and res["files"] == 2
    assert res["sha256"] == hashlib.sha256((root / "bundle.json").read_bytes()).hexdigest()
    assert verify(root, res["sha256"])["checked"] is True
    with pytest.raises(ChecksumMismatch, match="bundle.json: expected"):
        verify(root, OTHER_SHA)
    (root / "members" / "b.onnx").write_bytes(b"graph of b, edited")
    with pytest.raises(ChecksumMismatch, match="members/b.onnx"):
        verify(root)


def test_verify_directory_without_bundle_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="without bundle.json"):
        verify(tmp_path)


# ------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli():
    from veracity.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["weights", *map(str, args)])


def test_cli_fetch_prints_path_and_sha256(cli, server: Server, tmp_path: Path) -> None:
    res = cli("fetch", server.url, "--sha256", SHA, "--out", tmp_path, "--no-progress")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [f"OK {tmp_path / 'weights.bin'} ({len(DATA)} bytes)", f"sha256 {SHA}"]
    assert (tmp_path / "weights.bin").read_bytes() == DATA


def test_cli_fetch_errors_are_one_line_with_exit_codes(cli, server: Server, tmp_path: Path) -> None:
    res = cli("fetch", server.url, "--sha256", OTHER_SHA, "--out", tmp_path, "--no-progress")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: sha256 mismatch") and res.stderr.count("\n") == 1
    assert "Traceback" not in res.output and _leftovers(tmp_path) == []
    res = cli("fetch", f"{server.base}/gone.bin", "--sha256", SHA, "--out", tmp_path, "--no-progress")
    assert res.exit_code == 2 and "HTTP 404" in res.stderr and "Traceback" not in res.output
    res = cli("fetch", server.url, "--sha256", "xyz", "--out", tmp_path)
    assert res.exit_code == 2 and "64 hex digits" in res.stderr


def test_cli_verify_file_and_bundle(cli, tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(DATA)
    res = cli("verify", f, "--sha256", SHA)
    assert res.exit_code == 0 and res.stdout.splitlines() == [f"OK {f} ({len(DATA)} bytes)", f"sha256 {SHA}"]
    res = cli("verify", f, "--sha256", OTHER_SHA)
    assert res.exit_code == 1 and "sha256 mismatch" in res.stderr
    root = _bundle(tmp_path / "bundle")
    res = cli("verify", root)
    assert res.exit_code == 0 and res.stdout.startswith(f"OK bundle {root}: 2 files match bundle.json")
    (root / "members" / "a.safetensors").write_bytes(b"tampered")
    res = cli("verify", root)
    assert res.exit_code == 1 and "members/a.safetensors" in res.stderr and "Traceback" not in res.output
