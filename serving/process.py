"""Start the Veracity service as a real ``bentoml serve`` child process on loopback.

For tests and benchmarks: the server is a child in its own process group (BentoML forks
a worker in a session of its own), bound to 127.0.0.1 on a free port, with its own
``VERACITY_*`` settings and state directories; :meth:`ServiceProcess.stop` sends SIGTERM,
then SIGKILL to the group and to the worker, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).parent / "bentoml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """One ``bentoml serve serving.service:Veracity`` process."""

    def __init__(self, state: Path, env: dict[str, str], port: int | None = None):
        self.state = Path(state)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.state / "server.out"
        base = {k: v for k, v in os.environ.items() if not k.startswith("VERACITY_")}
        self.env = {**base, "BENTOML_DO_NOT_TRACK": "true", "DO_NOT_TRACK": "true",
                    "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                    "BENTOML_HOME": str(self.state / "bentoml"),
                    "VERACITY_PROJECT_ROOT": str(self.state), "VERACITY_LOG_DIR": str(self.state / "logs"),
                    "VERACITY_REQUEST_LOG_DIR": str(self.state / "requests"),
                    "VERACITY_ARTIFACT_DIR": str(self.state / "artifacts"),
                    "VERACITY_CACHE_DIR": str(self.state / "models"), "VERACITY_DEVICE": "cpu",
                    "VERACITY_JOB_DIR": str(self.state / "jobs"),
                    "VERACITY_THREADS": "2", **env}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> ServiceProcess:
        """Start and wait until ``/health/live`` answers (not until ready)."""
        self.state.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(BENTOML), "serve", "serving.service:Veracity", "--host", "127.0.0.1", "--port", str(self.port),
             "--working-dir", str(ROOT)], cwd=str(ROOT), env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/health/live", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"bentoml serve did not answer within {timeout:.0f} s:\n{self.output()[-3000:]}")

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = httpx.get(self.url + "/health", timeout=5)
            last = r.json()
            if last.get("ready"):
                return last
            time.sleep(0.5)
        raise RuntimeError(f"not ready within {timeout:.0f} s: {last}\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def job_pids(self) -> dict[str, int]:
        """PIDs of the embedded broker and the job workers (from their PID files), alive or not."""
        jobs = Path(self.env["VERACITY_JOB_DIR"])
        out = {}
        for f in [jobs / "broker" / "redis.pid", *sorted((jobs / "workers").glob("*.pid"))]:
            with contextlib.suppress(OSError, ValueError):
                out[f.stem] = int(f.read_text().strip())
        return out

    def kill_api(self) -> None:
        """SIGKILL the API (BentoML's processes) only: the broker and job workers live on."""
        if self.proc is None:
            return
        keep = set(self.job_pids().values())
        keep |= {d for p in keep for d in descendants(p)}
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            if pid not in keep:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (BentoML stops its worker, the job workers and the broker), then SIGKILL
        for the group, the worker and whatever job process outlived it."""
        self._stop_api()
        # Job processes adopted from an earlier server or left by a kill: their command lines
        # name this server's state directory.
        mine = str(self.state).encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            with contextlib.suppress(OSError, ValueError):
                if mine in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                    os.kill(int(cmdline.parent.name), signal.SIGKILL)

    def _stop_api(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = descendants(self.proc.pid)  # BentoML's worker runs in a session of its own
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a no-op when BentoML has stopped it


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
