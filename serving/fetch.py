"""Fetching a client-named URL (the ``video_url`` job input) into a local file.

This module owns one promise: a client can make the server download a public http(s) URL, but
cannot make it reach internal addresses (loopback, private ranges, link-local, cloud metadata,
...) nor fill its disk. Every hop of a redirect chain is checked again, the connection goes to
the address that was checked (so a DNS answer that changes between check and connect, "DNS
rebinding", gains nothing), the byte count is enforced while streaming, and a partial file is
never left behind. Every failure is a :class:`FetchError` carrying the HTTP status the service
should answer with.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The HTTP status the service answers with for each reason: the client's fault (400), too big
# (413), the origin's fault (422), ours (500).
STATUS_BY_REASON: dict[str, int] = {
    "bad_url": 400,
    "scheme": 400,
    "address_refused": 400,
    "dns": 422,
    "too_large": 413,
    "too_many_redirects": 422,
    "timeout": 422,
    "upstream_status": 422,
    "connection": 422,
    "tls": 422,
    "empty": 422,
    "storage": 500,
}

_SCHEMES = ("http", "https")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64's well-known prefix carries an IPv4 address in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


class FetchError(Exception):
    """A refused or failed fetch: ``reason`` (machine code), ``message``, ``status`` (HTTP)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = STATUS_BY_REASON.get(reason, 422)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch; ``allow_networks`` are CIDRs reachable even though not public."""

    max_bytes: int
    connect_timeout_s: float = 5
    read_timeout_s: float = 30
    max_redirects: int = 5
    allow_networks: tuple[str, ...] = ()
    # read_timeout_s bounds each read only; this bounds a body trickled in just under it.
    total_timeout_s: float = 600

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")
        for name in ("connect_timeout_s", "read_timeout_s", "total_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {self.max_redirects}")
        object.__setattr__(self, "allow_networks", self.parse_networks(self.allow_networks))

    @staticmethod
    def parse_networks(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Normalise CIDRs given as ``"10.0.0.0/8, 127.0.0.0/8"`` or a sequence of strings.

        Raises ValueError naming the first entry that is not a network in CIDR form.
        """
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        out: list[str] = []
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            try:
                out.append(str(ipaddress.ip_network(text, strict=True)))
            except ValueError as exc:
                raise ValueError(
                    f"allowed network {text!r} is not a CIDR network such as 10.0.0.0/8 "
                    f"or fd00::/8 (host names are not accepted): {exc}"
                ) from None
        return tuple(out)

    def networks(self) -> tuple[IPNetwork, ...]:
        """The allowed networks as :mod:`ipaddress` objects."""
        return tuple(ipaddress.ip_network(n) for n in self.allow_networks)


def refusal(ip: IPAddress, allowed: tuple[IPNetwork, ...] = ()) -> str | None:
    """Why ``ip`` may not be reached (a short phrase), or None when it may."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    if ip in _METADATA:
        return "cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped if ip.ipv4_mapped is not None else ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            why = refusal(embedded, allowed)
            return f"{why} (embedded in {ip})" if why else None
    checks = (
        (ip.is_unspecified, "unspecified address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_link_local, "link-local address"),
        (ip.is_multicast, "multicast address"),
        (ip.version == 4 and ip in _CGNAT, "carrier-grade NAT address"),
        (ip.is_private, "private address"),
        (ip.is_reserved, "reserved address"),
        (not ip.is_global, "non-public address"),
    )
    return next((why for hit, why in checks if hit), None)


def check_url(url: str, policy: FetchPolicy) -> list[IPAddress]:
    """Validate ``url`` and resolve its host; return the addresses, all of them reachable.

    Raises FetchError (``bad_url``, ``scheme``, ``dns``, ``address_refused``). A name with any
    refused address is refused: which one a connection would use is not ours to choose.
    """
    if not isinstance(url, str) or not url or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise FetchError("bad_url", "the URL is empty or contains whitespace/control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise FetchError("bad_url", f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise FetchError("scheme", f"only http and https URLs are fetched, not {scheme!r}")
    if "@" in parts.netloc:
        raise FetchError("bad_url", "URLs with credentials (user@host) are not accepted")
    if not host:
        raise FetchError("bad_url", "the URL has no host")
    port = port or (443 if scheme == "https" else 80)

    addresses: list[IPAddress]
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if ":" in host or "%" in host:
            raise FetchError("bad_url", f"{host!r} is not a valid host") from None
        addresses = _resolve(host, port, policy.connect_timeout_s)

    allowed = policy.networks()
    for ip in addresses:
        why = refusal(ip, allowed)
        if why:
            raise FetchError("address_refused", f"{host} resolves to {ip}, a {why}")
    return addresses


_DNS = ThreadPoolExecutor(4, thread_name_prefix="veracity-dns")


def _resolve(host: str, port: int, timeout_s: float) -> list[IPAddress]:
    # getaddrinfo has no time limit of its own: a resolver that never answers would hold
    # the caller (a request thread, a job) for as long as it likes.
    lookup = _DNS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=timeout_s)
    except FutureTimeout:
        raise FetchError("dns", f"no answer resolving {host!r} within {timeout_s:g} s") from None
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise FetchError("dns", f"cannot resolve {host!r}: {exc}") from None
    out: list[IPAddress] = []
    for family, *_, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise FetchError("dns", f"{host!r} has no IPv4 or IPv6 address")
    return out


def fetch_url(
    url: str,
    dest: Path,
    policy: FetchPolicy,
    *,
    user_agent: str = "veracity",
    ssl_context: ssl.SSLContext | None = None,
) -> dict[str, Any]:
    """Download ``url`` into ``dest`` under ``policy``, following redirects that pass the checks.

    ``ssl_context`` replaces the default trust store (e.g. a private CA). Returns ``{"url":
    final URL, "bytes", "redirects", "content_type", "sha256"}``; raises FetchError only.
    ``dest`` appears only complete: the body goes to a temporary file beside it first.
    """
    dest = Path(dest)
    timeout = httpx.Timeout(
        connect=policy.connect_timeout_s,
        read=policy.read_timeout_s,
        write=policy.read_timeout_s,
        pool=policy.connect_timeout_s,
    )
    deadline = time.monotonic() + policy.total_timeout_s
    current = url
    redirects = 0
    try:
        while True:
            addresses = check_url(current, policy)
            with _open(current, addresses, timeout, user_agent, ssl_context) as resp:
                if resp.status_code in _REDIRECTS and "location" in resp.headers:
                    if redirects >= policy.max_redirects:
                        raise FetchError(
                            "too_many_redirects",
                            f"more than {policy.max_redirects} redirects (last at {current})",
                        )
                    redirects += 1
                    current = urljoin(current, resp.headers["location"])
                    continue
                if not 200 <= resp.status_code < 300:
                    raise FetchError(
                        "upstream_status", f"the origin answered HTTP {resp.status_code}"
                    )
                size, digest = _save(resp, dest, policy, deadline)
                return {
                    "url": current,
                    "bytes": size,
                    "redirects": redirects,
                    "content_type": resp.headers.get("content-type"),
                    "sha256": digest,
                }
    except FetchError:
        raise
    except httpx.TimeoutException as exc:
        raise FetchError(
            "timeout", f"the origin did not answer in time ({_describe(exc)})"
        ) from None
    except httpx.ConnectError as exc:
        if _caused_by(exc, ssl.SSLError):
            raise FetchError("tls", f"TLS with the origin failed: {_describe(exc)}") from None
        raise FetchError("connection", f"cannot connect: {_describe(exc)}") from None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise FetchError("bad_url", f"the URL cannot be requested: {_describe(exc)}") from None
    except (httpx.HTTPError, httpx.StreamError) as exc:
        # Resets, protocol violations, undecodable bodies: the origin misbehaved mid-exchange.
        raise FetchError("connection", f"the transfer failed: {_describe(exc)}") from None
    except ssl.SSLError as exc:
        raise FetchError("tls", f"TLS with the origin failed: {exc}") from None
    except OSError as exc:
        raise FetchError("storage", f"cannot store the download: {exc}") from None


@contextmanager
def _open(
    url: str,
    addresses: list[IPAddress],
    timeout: httpx.Timeout,
    user_agent: str,
    ssl_context: ssl.SSLContext | None,
) -> Iterator[httpx.Response]:
    """Request ``url`` at one of its checked ``addresses``, streaming the response.

    The name is not resolved again: the URL names the address, the Host header and the TLS
    server name carry the original host. A fresh client per hop, so that no pooled connection
    made (and verified) for one host name is reused for another sharing its address.
    """
    target = httpx.URL(url)
    headers = {
        "Host": target.netloc.decode("ascii"),
        "User-Agent": user_agent,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
    }
    extensions = {}
    if target.scheme == "https" and not _is_ip(target.host):
        extensions["sni_hostname"] = target.host
    with httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        # Proxies from the environment would resolve the name themselves, undoing the pin.
        trust_env=False,
        verify=ssl_context if ssl_context is not None else True,
    ) as client:
        for i, ip in enumerate(addresses):
            request = client.build_request(
                "GET", target.copy_with(host=str(ip)), headers=headers, extensions=extensions
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:
                # Refused/unreachable fails fast, so the next checked address is worth a try;
                # a TLS failure is the origin's own answer and would only repeat.
                if i == len(addresses) - 1 or _caused_by(exc, ssl.SSLError):
                    raise
                continue
            try:
                yield response
            finally:
                response.close()
            return


def _save(
    resp: httpx.Response, dest: Path, policy: FetchPolicy, deadline: float
) -> tuple[int, str]:
    declared = resp.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(
            "too_large", f"the origin announces {int(declared)} bytes, over {policy.max_bytes}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    size = 0
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            # Chunks as they arrive (no re-buffering), so the cap and deadline act promptly;
            # decoded bytes are counted, so a compressed body cannot expand past the cap.
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > policy.max_bytes:
                    raise FetchError("too_large", f"the body passed {policy.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(
                        "timeout", f"the download took longer than {policy.total_timeout_s} s"
                    )
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise FetchError("empty", "the origin sent an empty body")
        os.replace(tmp, dest)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise
    return size, digest.hexdigest()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
