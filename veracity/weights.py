"""Weights kept outside the model registry: fetched once by URL, pinned by sha256, verified.

Owns getting a file of weights that MLflow does not hold (a pretrained backbone, a
bundle archive on a file server) onto disk exactly as pinned, and checking what is on
disk later: a file against its sha256, or a bundle directory against its ``bundle.json``
(through :func:`veracity.bundle.verify_bundle`). ``veracity weights fetch|verify`` call
these two functions. Nothing here runs at import time or in the default pipeline, which
stays offline (DESIGN §6): a download happens only when a user asks for one.

A download goes to ``<dest>.part`` and is resumable: a later attempt (a retry after a
network error, or another run after an interrupted one) asks for the rest with an HTTP
``Range`` header, and starts over when the server answers with the whole file instead.
The sha256 covers every byte of the part (the resumed prefix too); only a part whose
sha256 is the pinned one is renamed, atomically, to ``dest``: a reader never sees a
half-written or wrong file under the final name. Standard library HTTP (urllib) only.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from veracity.lineage import sha256_file

log = logging.getLogger(__name__)

SCHEMES = ("http", "https", "file")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# Statuses that say "try again later"; any other error status is final (404, 403, ...).
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Wait before the first retry; doubles each time up to _BACKOFF_MAX_S (tests set it to 0).
_BACKOFF_S = 0.5
_BACKOFF_MAX_S = 8.0
_USER_AGENT = "veracity-weights"


class WeightsError(RuntimeError):
    """Weights that cannot be fetched or checked: bad input, HTTP status, network error."""


class ChecksumMismatch(WeightsError):
    """A file (or bundle) is not what its pinned sha256 says: a failed check."""


class _Transient(Exception):
    """A failure worth another attempt (network error, 5xx, short body); resumes from disk."""


class _StartOver(Exception):
    """The part on disk cannot be resumed; it has been deleted and the next attempt starts at 0."""


def fetch(url: str, dest: Path | str, sha256: str, *, progress: bool = True, chunk: int = 1 << 20,
          timeout: float = 30, retries: int = 3) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already has the pinned sha256.

    Args:
        url: ``http://``, ``https://`` or ``file://`` URL.
        dest: the file to write; an existing directory means ``dest/<file name in the URL>``.
            An existing file with another sha256 is downloaded again (and replaced).
        sha256: the expected sha256, 64 hex digits (either case).
        progress: draw a progress bar on stderr (only when stderr is a terminal).
        chunk: bytes read per block.
        timeout: seconds to wait for the server to connect or send the next block.
        retries: attempts after the first one on a network error, a 408/429/5xx status or
            a body cut short; each resumes from the bytes already in ``<dest>.part``.

    Returns:
        The path of the verified file.

    Raises:
        WeightsError: a malformed sha256 or URL, an error status (named), or a network error
            that outlasted the retries.
        ChecksumMismatch: the downloaded bytes have another sha256 (expected and got are
            named); the part is deleted and ``dest`` is left as it was.
    """
    expected = _expected(sha256)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise WeightsError(f"cannot fetch {url!r}: the URL scheme must be one of {', '.join(SCHEMES)}")
    if chunk < 1 or retries < 0:
        raise ValueError(f"chunk must be >= 1 and retries >= 0, got chunk={chunk}, retries={retries}")
    dest = _destination(url, Path(dest))
    if dest.is_file():
        got = sha256_file(dest)
        if got == expected:
            log.info("%s is already present with sha256 %s; nothing downloaded", dest, expected)
            return dest
        log.warning("%s exists with sha256 %s, not %s: downloading it again", dest, got, expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    show = progress and sys.stderr.isatty()
    failures = 0
    while True:
        try:
            digest = _attempt(url, part, expected, chunk=chunk, timeout=timeout, show=show, name=dest.name)
            break
        except _StartOver as exc:
            # The part was deleted, so the next request carries no Range: this cannot loop.
            log.warning("%s: %s; starting over", url, exc)
        except _Transient as exc:
            failures += 1
            if failures > retries:
                raise WeightsError(f"could not download {url} after {failures} attempt(s): {exc}") from None
            wait = min(_BACKOFF_S * 2 ** (failures - 1), _BACKOFF_MAX_S)
            log.warning("%s: %s; retry %d/%d in %.1f s, resuming from the bytes on disk",
                        url, exc, failures, retries, wait)
            time.sleep(wait)
    if digest != expected:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"sha256 mismatch for {url}: expected {expected}, got {digest}; "
                               "the download was deleted")
    os.replace(part, dest)
    return dest


def verify(path: Path | str, sha256: str | None = None) -> dict[str, Any]:
    """Check weights on disk: a file's sha256, or a Veracity bundle directory's checksums.

    Args:
        path: a file, or a bundle directory (one holding ``bundle.json``).
        sha256: the expected sha256 of the file; for a bundle, of its ``bundle.json``
            (which pins every other file, and is the bundle sha256 the benchmark and the
            registry record). None: a file's sha256 is only computed, not compared.

    Returns:
        ``path``, ``kind`` (``file`` or ``bundle``), ``sha256``, ``size`` (bytes, a file) or
        ``files`` (how many files ``bundle.json`` pins, a bundle), and ``checked`` (whether
        anything was compared: a bundle always is).

    Raises:
        ChecksumMismatch: the sha256 differs (expected and got named), or a bundle file is
            missing, unlisted or changed (the file is named).
        WeightsError: a malformed sha256, a missing path, or a directory that is no bundle.
    """
    path = Path(path)
    expected = _expected(sha256) if sha256 is not None else None
    if path.is_dir():
        return _verify_bundle(path, expected)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist (or is not a regular file)")
    got = sha256_file(path)
    if expected is not None and got != expected:
        raise ChecksumMismatch(f"sha256 mismatch for {path}: expected {expected}, got {got}")
    return {"path": str(path), "kind": "file", "sha256": got, "size": path.stat().st_size,
            "checked": expected is not None}


def _verify_bundle(root: Path, expected: str | None) -> dict[str, Any]:
    from veracity.bundle import BUNDLE_JSON, BundleError, verify_bundle

    if not (root / BUNDLE_JSON).is_file():
        raise WeightsError(f"{root} is a directory without {BUNDLE_JSON}: give a weights file or a bundle")
    try:
        spec = verify_bundle(root)
    except BundleError as exc:
        raise ChecksumMismatch(f"bundle {root} failed verification: {exc}") from None
    got = sha256_file(root / BUNDLE_JSON)
    if expected is not None and got != expected:
        raise ChecksumMismatch(f"sha256 mismatch for {root / BUNDLE_JSON}: expected {expected}, got {got}")
    return {"path": str(root), "kind": "bundle", "sha256": got, "files": len(spec.get("files") or {}),
            "checked": True}


def _expected(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise WeightsError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha256.lower()


def _destination(url: str, dest: Path) -> Path:
    if not dest.is_dir():
        return dest
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    if not name or name in (".", ".."):
        raise WeightsError(f"{url} names no file to write into directory {dest}: give a file path as dest")
    return dest / name


def _attempt(url: str, part: Path, expected: str, *, chunk: int, timeout: float, show: bool, name: str) -> str:
    """One request: continue ``part`` from its size, or rewrite it; the sha256 of the whole part."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # Nothing past ``offset``: the part is most likely complete already.
            digest = _hash_file(part).hexdigest()
            if digest == expected:
                return digest
            part.unlink()
            raise _StartOver(f"the server has nothing past byte {offset} (HTTP 416) and the partial "
                             "file does not match") from None
        if exc.code in _RETRY_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise WeightsError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(f"network error: {_reason(exc)}") from None
    with resp:
        status = getattr(resp, "status", None) or 200  # a file:// answer has no status
        if offset and status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _StartOver(f"asked for bytes from {offset}, the server sent them from {start}")
            log.info("%s: resuming at byte %d", url, offset)
            h, mode = _hash_file(part), "ab"
        elif status == 200:
            if offset:
                log.info("%s: the server ignored the Range request (HTTP 200); starting over", url)
            offset, h, mode = 0, hashlib.sha256(), "wb"
        else:
            raise WeightsError(f"could not download {url}: unexpected HTTP {status}")
        length_header = resp.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.strip().isdigit() else None
        total = offset + length if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(total=total, initial=offset, desc=name, unit="B", unit_scale=True,
                                         unit_divisor=1024, disable=not show, file=sys.stderr) as bar:
            while True:
                try:
                    block = resp.read(chunk)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(f"network error after {offset + received} bytes: {_reason(exc)}") from None
                if not block:
                    break
                f.write(block)
                h.update(block)
                received += len(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
    if length is not None and received < length:
        raise _Transient(f"connection closed after {offset + received} of {total} bytes")
    return h.hexdigest()


def _hash_file(path: Path) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def _range_start(content_range: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL`` (None if absent or malformed)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range or "")
    return int(m.group(1)) if m else None


def _reason(exc: BaseException) -> str:
    """One line for a network error (urllib wraps the socket error in ``URLError.reason``)."""
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return str(reason) or type(reason).__name__
