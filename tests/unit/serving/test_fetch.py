"""Fetching client URLs: only public (or allowed) addresses, every redirect rechecked, caps kept."""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from serving.fetch import STATUS_BY_REASON, FetchError, FetchPolicy, check_url, fetch_url

BODY = bytes(range(256)) * 40
CAP = 64 * 1024
SLOW_S = 1.5
LOOPBACK = ("127.0.0.0/8",)
ALLOWED = FetchPolicy(
    max_bytes=CAP, connect_timeout_s=2, read_timeout_s=0.4, allow_networks=LOOPBACK
)
STRICT = FetchPolicy(max_bytes=CAP, connect_timeout_s=2, read_timeout_s=0.4)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0: each response ends the connection, so a body needs no Content-Length."""

    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(code)
        fields = {name.replace("_", "-"): value for name, value in headers.items()}
        fields.setdefault("Content-Length", str(len(body)))
        for name, value in fields.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(302, Location=location)

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        port = self.server.server_address[1]
        path = self.path
        if path == "/file":
            self._send(200, BODY, Content_Type="video/mp4")
        elif path == "/host":
            self._send(200, self.headers["Host"].encode(), Content_Type="text/plain")
        elif path == "/empty":
            self._send(200)
        elif path == "/huge":
            self._send(200, b"x" * 1024, Content_Length=str(10**9))
        elif path in ("/stream", "/trickle"):
            self.send_response(200)
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"s" * (16 * 1024) if path == "/stream" else b"t")
                self.wfile.flush()
                if path == "/trickle":
                    time.sleep(0.05)
        elif path.startswith("/r/"):
            n = int(path[3:])
            self._redirect(f"/r/{n - 1}" if n > 1 else f"http://127.0.0.1:{port}/file")
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/loop":
            self._redirect("/loop")
        elif path.startswith("/status/"):
            self._send(int(path[8:]), b"no")
        elif path == "/slow":
            time.sleep(SLOW_S)
            self._send(200, BODY)
        else:
            self._send(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-body (the caps at work) is expected here


def _serve(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[_Server]:
    yield from _serve(_Server())


@pytest.fixture
def origin(http_server: _Server) -> str:
    http_server.hits.clear()
    return f"http://127.0.0.1:{http_server.server_address[1]}"


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """Fake names: ``dns[name]`` is the answers given in turn (the last repeats; [] = NXDOMAIN).

    Other names go to the real resolver. Patched on the socket module, so a second lookup by the
    HTTP client would be answered here too.
    """
    table: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def fake(host: str | bytes | None, port: object, *args: object, **kwargs: object) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in table:
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        answers = table[name].pop(0) if len(table[name]) > 1 else table[name][0]
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for a in answers:
            if ":" in a:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


def _refused(call: Callable[[], object], reason: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        call()
    assert info.value.reason == reason, info.value
    assert info.value.status == STATUS_BY_REASON[reason]
    return info.value


# --- checks without any connection ----------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "[::1]",
        "[::]",
        "[fe80::1]",
        "[fc00::1]",
        "[fd00:ec2::254]",
        "[::ffff:127.0.0.1]",
        "[::ffff:169.254.169.254]",
        "[::ffff:10.0.0.1]",
        "[2002:7f00:1::]",
        "[64:ff9b::a9fe:a9fe]",
    ],
)
def test_internal_address_literals_are_refused(host: str) -> None:
    err = _refused(lambda: check_url(f"http://{host}:8080/v.mp4", STRICT), "address_refused")
    assert err.status == 400


def test_public_literals_pass_and_an_allowed_network_opens_only_itself() -> None:
    assert [str(a) for a in check_url("https://8.8.8.8/v.mp4", STRICT)] == ["8.8.8.8"]
    assert [str(a) for a in check_url("http://[2606:4700::1111]/", STRICT)] == ["2606:4700::1111"]
    assert [str(a) for a in check_url("http://[::ffff:8.8.8.8]/", STRICT)] == ["::ffff:808:808"]
    policy = FetchPolicy(max_bytes=1, allow_networks=("10.0.0.0/8",))
    assert [str(a) for a in check_url("http://10.9.9.9/", policy)] == ["10.9.9.9"]
    _refused(lambda: check_url("http://192.168.0.1/", policy), "address_refused")
    _refused(lambda: check_url("http://169.254.169.254/", policy), "address_refused")


@pytest.mark.parametrize("url", ["ftp://example.com/v.mp4", "file:///etc/passwd", "gopher://x/"])
def test_only_http_and_https_are_fetched(url: str) -> None:
    assert _refused(lambda: check_url(url, STRICT), "scheme").status == 400


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@8.8.8.8/v.mp4",
        "http://user@8.8.8.8/",
        "http:///v.mp4",
        "https://",
        "http://8.8.8.8:99999/",
        "http://exa mple.com/",
        "http://[::1/",
        "",
    ],
)
def test_malformed_urls_and_credentials_are_bad_urls(url: str) -> None:
    assert _refused(lambda: check_url(url, STRICT), "bad_url").status == 400


def test_localhost_by_name_is_refused_without_the_allowance() -> None:
    err = _refused(lambda: check_url("http://localhost:8000/", STRICT), "address_refused")
    assert "localhost" in err.message
    assert all(a.is_loopback for a in check_url("http://localhost:8000/", ALLOWED))


def test_a_name_with_any_internal_address_is_refused(dns: dict[str, list[list[str]]]) -> None:
    dns["mixed.test"] = [["8.8.8.8", "10.0.0.7"]]
    dns["public.test"] = [["8.8.8.8", "2606:4700::1111"]]
    err = _refused(lambda: check_url("http://mixed.test/", STRICT), "address_refused")
    assert "10.0.0.7" in err.message
    assert [str(a) for a in check_url("http://public.test/", STRICT)] == [
        "8.8.8.8",
        "2606:4700::1111",
    ]


def test_an_unresolvable_name_is_a_dns_failure(dns: dict[str, list[list[str]]]) -> None:
    dns["nowhere.test"] = [[]]
    assert _refused(lambda: check_url("http://nowhere.test/", STRICT), "dns").status == 422


def test_allowed_networks_must_be_cidrs() -> None:
    assert FetchPolicy.parse_networks(" 127.0.0.0/8, ,fd00::/8") == ("127.0.0.0/8", "fd00::/8")
    with pytest.raises(ValueError, match="'localhost'"):
        FetchPolicy.parse_networks("10.0.0.0/8,localhost")
    with pytest.raises(ValueError, match="'10.0.0.1/8'"):
        FetchPolicy.parse_networks("10.0.0.1/8")
    with pytest.raises(ValueError, match="'example.com'"):
        FetchPolicy(max_bytes=1, allow_networks=("example.com",))


# --- downloads from a local server ----------------------------------------------------------


def test_a_file_is_fetched_whole_when_loopback_is_allowed(origin: str, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "clip.mp4"
    info = fetch_url(f"{origin}/file", dest, ALLOWED)
    assert dest.read_bytes() == BODY
    assert info == {
        "url": f"{origin}/file",
        "bytes": len(BODY),
        "redirects": 0,
        "content_type": "video/mp4",
        "sha256": hashlib.sha256(BODY).hexdigest(),
    }
    assert list(dest.parent.iterdir()) == [dest]


def test_loopback_is_refused_before_any_request(
    origin: str, http_server: _Server, tmp_path: Path
) -> None:
    dest = tmp_path / "clip.mp4"
    _refused(lambda: fetch_url(f"{origin}/file", dest, STRICT), "address_refused")
    assert http_server.hits == [] and list(tmp_path.iterdir()) == []


def test_the_checked_address_is_the_one_connected_to(
    http_server: _Server, dns: dict[str, list[list[str]]], tmp_path: Path
) -> None:
    # The second answer would fail: fetching works only if the name is not looked up again.
    dns["video.test"] = [["127.0.0.1"], []]
    port = http_server.server_address[1]
    info = fetch_url(f"http://video.test:{port}/host", tmp_path / "h", ALLOWED)
    assert (tmp_path / "h").read_bytes() == f"video.test:{port}".encode()
    assert info["url"] == f"http://video.test:{port}/host"
    assert dns["video.test"] == [[]]


def test_a_redirect_chain_is_followed_and_counted(origin: str, tmp_path: Path) -> None:
    info = fetch_url(f"{origin}/r/3", tmp_path / "clip.mp4", ALLOWED)
    assert (info["redirects"], info["url"]) == (3, f"{origin}/file")
    assert (tmp_path / "clip.mp4").read_bytes() == BODY
    short = FetchPolicy(max_bytes=CAP, max_redirects=2, allow_networks=LOOPBACK)
    _refused(lambda: fetch_url(f"{origin}/r/3", tmp_path / "b.mp4", short), "too_many_redirects")
    assert not (tmp_path / "b.mp4").exists()


def test_a_redirect_to_the_metadata_address_is_refused(origin: str, tmp_path: Path) -> None:
    err = _refused(
        lambda: fetch_url(f"{origin}/to-metadata", tmp_path / "m", ALLOWED), "address_refused"
    )
    assert "169.254.169.254" in err.message and list(tmp_path.iterdir()) == []


def test_a_redirect_to_a_file_url_is_refused(origin: str, tmp_path: Path) -> None:
    _refused(lambda: fetch_url(f"{origin}/to-file", tmp_path / "f", ALLOWED), "scheme")
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_loop_ends(origin: str, http_server: _Server, tmp_path: Path) -> None:
    err = _refused(
        lambda: fetch_url(f"{origin}/loop", tmp_path / "l", ALLOWED), "too_many_redirects"
    )
    assert err.status == 422 and http_server.hits == ["/loop"] * (ALLOWED.max_redirects + 1)


def test_an_announced_size_over_the_cap_is_refused_unread(origin: str, tmp_path: Path) -> None:
    err = _refused(lambda: fetch_url(f"{origin}/huge", tmp_path / "h", ALLOWED), "too_large")
    assert err.status == 413 and list(tmp_path.iterdir()) == []


def test_a_body_streaming_past_the_cap_is_cut_and_removed(origin: str, tmp_path: Path) -> None:
    err = _refused(lambda: fetch_url(f"{origin}/stream", tmp_path / "s", ALLOWED), "too_large")
    assert err.status == 413 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [404, 500])
def test_an_error_status_from_the_origin_is_upstream_status(
    origin: str, tmp_path: Path, code: int
) -> None:
    err = _refused(
        lambda: fetch_url(f"{origin}/status/{code}", tmp_path / "x", ALLOWED), "upstream_status"
    )
    assert err.status == 422 and str(code) in err.message and list(tmp_path.iterdir()) == []


def test_an_empty_body_is_refused(origin: str, tmp_path: Path) -> None:
    _refused(lambda: fetch_url(f"{origin}/empty", tmp_path / "e", ALLOWED), "empty")
    assert list(tmp_path.iterdir()) == []


def test_a_slow_origin_times_out_at_the_read_timeout(origin: str, tmp_path: Path) -> None:
    start = time.monotonic()
    _refused(lambda: fetch_url(f"{origin}/slow", tmp_path / "s", ALLOWED), "timeout")
    assert time.monotonic() - start < SLOW_S - 0.3
    assert list(tmp_path.iterdir()) == []


def test_a_trickling_body_hits_the_total_timeout(origin: str, tmp_path: Path) -> None:
    # Each byte arrives well within the read timeout; only the total bound stops it.
    policy = FetchPolicy(
        max_bytes=CAP, read_timeout_s=1, total_timeout_s=0.3, allow_networks=LOOPBACK
    )
    start = time.monotonic()
    _refused(lambda: fetch_url(f"{origin}/trickle", tmp_path / "t", policy), "timeout")
    assert time.monotonic() - start < 2 and list(tmp_path.iterdir()) == []


def test_a_closed_port_is_a_connection_failure(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _refused(
        lambda: fetch_url(f"http://127.0.0.1:{port}/", tmp_path / "c", ALLOWED), "connection"
    )
    assert err.status == 422 and list(tmp_path.iterdir()) == []


# --- TLS: the certificate is checked against the name, not the pinned address ---------------


def _tls_contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for ``video.test`` and a client context trusting only its test CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = dict.fromkeys(
        ["content_commitment", "key_encipherment", "data_encipherment", "key_agreement"]
        + ["encipher_only", "decipher_only"],
        False,
    )
    ca = (
        build("test CA", ca_key, "test CA")
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        build("video.test", key, "test CA")
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("video.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (folder / "leaf.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "leaf.pem", folder / "leaf.key")
    return server, ssl.create_default_context(cafile=str(folder / "ca.pem"))


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ssl.SSLContext]]:
    server_ctx, client_ctx = _tls_contexts(tmp_path_factory.mktemp("tls"))
    server = _Server()
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    for running in _serve(server):
        yield running.server_address[1], client_ctx


def test_https_verifies_the_host_name_while_connecting_to_the_address(
    tls_origin: tuple[int, ssl.SSLContext], dns: dict[str, list[list[str]]], tmp_path: Path
) -> None:
    port, trust = tls_origin
    dns["video.test"] = [["127.0.0.1"]]
    dns["other.test"] = [["127.0.0.1"]]
    info = fetch_url(f"https://video.test:{port}/file", tmp_path / "ok", ALLOWED, ssl_context=trust)
    assert info["bytes"] == len(BODY) and (tmp_path / "ok").read_bytes() == BODY
    # Same address, same certificate, but not this name's certificate.
    url = f"https://other.test:{port}/file"
    err = _refused(lambda: fetch_url(url, tmp_path / "bad", ALLOWED, ssl_context=trust), "tls")
    assert err.status == 422 and not (tmp_path / "bad").exists()
    # Without the test CA the default trust store refuses the certificate.
    _refused(lambda: fetch_url(f"https://video.test:{port}/file", tmp_path / "d", ALLOWED), "tls")


def test_a_resolver_that_does_not_answer_is_a_dns_error_within_the_connect_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def silent(*args: object, **kwargs: object) -> list:
        time.sleep(3.0)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", silent)
    t = time.monotonic()
    err = _refused(lambda: check_url("http://slow.test/x.mp4", FetchPolicy(max_bytes=CAP, connect_timeout_s=0.3)),
                   "dns")
    assert time.monotonic() - t < 2.0 and "within 0.3 s" in err.message
