"""Durable analysis jobs: the job records, the Celery app and task, and the service's side of it.

A job is accepted only once it is on disk: the upload is fsynced under ``VERACITY_JOB_DIR``,
its record is written to Redis (the broker; the embedded one fsyncs every write), and its
message is queued, all before the API answers ``202``. Workers (``veracity worker``, the
same code at any scale) run Celery with late acknowledgement, ``reject_on_worker_lost``,
prefetch 1 and a visibility timeout longer than the job time limit, so a job whose worker
is killed is delivered again. Delivery is at least once; a job is made idempotent by its
record: :meth:`JobStore.claim` refuses a job that is finished or running elsewhere (live
heartbeat), and :meth:`JobStore.finish` writes a terminal state only once, so no job is
lost and none ends twice with different results.

States: ``queued`` -> ``running`` (phase and progress) -> ``done`` (the report; an
``ABSTAIN`` is a result) | ``failed`` (a specific ``error`` and ``message``) |
``cancelled``. Records of ended jobs expire after ``VERACITY_JOB_TTL_S``.

In the default set-up the service (:class:`JobSystem`) starts the embedded broker
(:mod:`serving.broker`) and ``VERACITY_JOB_WORKERS`` local workers, restarts a worker that
dies, and adopts a broker or worker that outlived a killed service. A sweep re-queues a job
whose record was written but whose message never reached the broker (the API died between
the two).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from serving.broker import EmbeddedBroker, _running
from serving.config import ServiceConfig
from serving.shadow import route

log = logging.getLogger("serving.jobs")

QUEUE = "veracity-jobs"
TASK = "veracity.analyze_job"
TERMINAL = frozenset({"done", "failed", "cancelled"})
HEARTBEAT_S = 2.0  # a running job's record is touched this often
STALE_S = 15.0  # a running job without a heartbeat for this long has lost its worker
UNQUEUED_GRACE_S = 5.0  # a queued record this old without its message is re-queued
PREFIX = "veracity:job:"
INDEX = "veracity:jobs"  # every job by creation time (listing)
UNSENT = "veracity:jobs:unsent"  # jobs whose message is not yet confirmed sent (the sweep's only input)

# Atomic transitions (Lua runs without interleaving inside Redis).
_CLAIM = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return 'missing' end
if s == 'done' or s == 'failed' or s == 'cancelled' then return 'terminal' end
local now = tonumber(ARGV[1])
if s == 'running' and now - tonumber(redis.call('HGET', KEYS[1], 'heartbeat_at') or '0') < tonumber(ARGV[4]) then
  return 'busy'
end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 'cancelled'
end
local a = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if a > tonumber(ARGV[3]) then return 'exhausted' end
redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1], 'updated_at', ARGV[1],
           'heartbeat_at', ARGV[1], 'worker', ARGV[2], 'phase', 'starting', 'progress', '0')
return 'run'
"""
_FINISH = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s or s == 'done' or s == 'failed' or s == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2], 'updated_at', ARGV[2], ARGV[3], ARGV[4])
if ARGV[1] == 'done' then redis.call('HSET', KEYS[1], 'progress', '1', 'phase', 'done') end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""
_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'state')
if not s then return 'missing' end
if s == 'done' or s == 'failed' or s == 'cancelled' then return s end
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1], 'updated_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[1])
return 'cancelling'
"""
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return '1' end
redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[1], 'updated_at', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'phase', ARGV[2], 'progress', ARGV[3]) end
return redis.call('HGET', KEYS[1], 'cancel_requested') or '0'
"""


class JobError(Exception):
    """A job cannot be accepted (the service answers 4xx/503 with ``error`` and the message)."""

    def __init__(self, error: str, message: str, status: int = 400):
        super().__init__(message)
        self.error, self.message, self.status = error, message, status


def broker_urls(cfg: ServiceConfig) -> tuple[str, str]:
    """(Celery broker URL, redis-py URL) for the configured or the embedded broker."""
    if cfg.broker_url:
        return cfg.broker_url, cfg.broker_url
    b = EmbeddedBroker(cfg.job_dir / "broker")
    return b.url, f"unix://{b.socket}"


def celery_app(cfg: ServiceConfig) -> Celery:
    """The Celery app of API and workers: late acknowledgement, redelivery on a lost worker."""
    url, _ = broker_urls(cfg)
    app = Celery("veracity", broker=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in the job record
        task_default_queue=QUEUE,
        task_serializer="json", accept_content=["json"],
        task_soft_time_limit=cfg.job_timeout_s,
        task_time_limit=cfg.job_timeout_s + 10,
        # Longer than the hard limit, so a job that is still running is never handed to a
        # second worker; a killed worker's job comes back after it (and a 2 s sweep).
        broker_transport_options={"visibility_timeout": int(cfg.job_timeout_s + 20),
                                  "unacked_restore_interval": 2, "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def _now() -> float:
    return round(time.time(), 3)


def _iso(t: Any) -> str | None:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(t))) + f".{int(float(t) % 1 * 1000):03d}Z"
    except (TypeError, ValueError):
        return None


class JobStore:
    """Job records in Redis hashes (``veracity:job:<id>``), indexed by creation time."""

    def __init__(self, client: redis.Redis, ttl_s: float):
        self.r = client
        self.ttl = int(ttl_s)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._progress = client.register_script(_PROGRESS)

    @classmethod
    def from_config(cls, cfg: ServiceConfig) -> JobStore:
        """The store on the configured (or embedded) broker's Redis."""
        _, url = broker_urls(cfg)
        return cls(redis.Redis.from_url(url, decode_responses=True, socket_timeout=10), cfg.job_ttl_s)

    @staticmethod
    def key(job_id: str) -> str:
        return PREFIX + job_id

    def create(self, job_id: str, fields: Mapping[str, Any]) -> None:
        now = _now()
        rec = {"id": job_id, "state": "queued", "created_at": now, "updated_at": now, "attempts": 0,
               "progress": 0, "phase": "queued", **{k: v for k, v in fields.items() if v is not None}}
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.key(job_id), mapping={k: str(v) for k, v in rec.items()})
            p.zadd(INDEX, {job_id: now})
            p.zadd(UNSENT, {job_id: now})
            p.execute()

    def mark_enqueued(self, job_id: str) -> None:
        with self.r.pipeline(transaction=True) as p:
            p.hset(self.key(job_id), "enqueued_at", str(_now()))
            p.zrem(UNSENT, job_id)
            p.execute()

    def get(self, job_id: str) -> dict[str, str] | None:
        rec = self.r.hgetall(self.key(job_id))
        return rec or None

    def claim(self, job_id: str, worker: str, max_attempts: int) -> str:
        """``run``, or why not: ``missing``, ``terminal``, ``busy`` (alive elsewhere),
        ``cancelled`` (now), ``exhausted`` (delivered too often)."""
        return str(self._claim(keys=[self.key(job_id)], args=[_now(), worker, max_attempts, STALE_S, self.ttl]))

    def heartbeat(self, job_id: str, phase: str = "", fraction: float = 0.0) -> bool:
        """Touch a running job (and set its phase); returns True when a cancel was asked for."""
        out = self._progress(keys=[self.key(job_id)], args=[_now(), phase, round(float(fraction), 3)])
        return str(out) == "1"

    def finish(self, job_id: str, state: str, *, result: Mapping[str, Any] | None = None,
               error: str | None = None, message: str | None = None) -> bool:
        """Write a terminal state once; False when the job had already ended (a duplicate run)."""
        if state not in TERMINAL:
            raise ValueError(f"not a terminal state: {state}")
        field, value = ("result", json.dumps(result)) if state == "done" else (
            "error", json.dumps({"error": error, "message": message}))
        return bool(self._finish(keys=[self.key(job_id)], args=[state, _now(), field, value, self.ttl]))

    def cancel(self, job_id: str) -> str:
        """``cancelled`` (was queued), ``cancelling`` (running: stops at its next phase),
        the terminal state it already had, or ``missing``."""
        return str(self._cancel(keys=[self.key(job_id)], args=[_now(), self.ttl]))

    def unqueued(self, older_than_s: float) -> list[str]:
        """Queued jobs whose message was never confirmed sent, created over ``older_than_s`` ago.

        Reads only the unsent set (empty but for an API that died mid-submission), so the
        watcher's sweep costs nothing however many jobs the index holds; index entries older
        than any record can live are trimmed on the way.
        """
        now = time.time()
        self.r.zremrangebyscore(INDEX, "-inf", now - self.ttl - 86400)
        out = []
        for job_id in self.r.zrangebyscore(UNSENT, "-inf", now - older_than_s):
            if self.r.hget(self.key(job_id), "state") == "queued":
                out.append(job_id)
            else:  # ended (cancelled) or expired before it was ever sent
                self.r.zrem(UNSENT, job_id)
        return out

    def ids(self, limit: int = 100) -> list[str]:
        return list(self.r.zrevrange(INDEX, 0, limit - 1))


def public(rec: Mapping[str, str]) -> dict[str, Any]:
    """A job record as the API shows it (no server paths)."""
    out: dict[str, Any] = {"job_id": rec["id"], "state": rec["state"], "status_url": f"/jobs/{rec['id']}",
                           "source": rec.get("source"), "created_at": _iso(rec.get("created_at")),
                           "started_at": _iso(rec.get("started_at")), "finished_at": _iso(rec.get("finished_at")),
                           "updated_at": _iso(rec.get("updated_at")), "attempts": int(rec.get("attempts", 0))}
    if rec.get("url"):
        out["video_url"] = rec["url"]
    if rec.get("filename"):
        out["filename"] = rec["filename"]
    if rec["state"] == "running":
        out["progress"] = {"phase": rec.get("phase"), "fraction": float(rec.get("progress", 0))}
        out["cancel_requested"] = rec.get("cancel_requested") == "1"
    for k in ("bundle_sha256", "registry_version", "served_by"):
        if rec.get(k):
            out[k] = rec[k]
    if rec.get("result"):
        out["result"] = json.loads(rec["result"])
    if rec.get("error"):
        out.update(json.loads(rec["error"]))
    return out


def public_report(report: Any, request_id: str, name: str) -> dict[str, Any]:
    """A report as a client sees it: no server path, explanation images as
    ``/artifacts/<request id>/<file>`` links (served by the API from ``VERACITY_ARTIFACT_DIR``)."""
    out = report.to_dict()
    out["path"] = name
    for o in (out.get("explanations") or {}).get("overlays", []):
        if o.get("png"):
            o["png"] = f"/artifacts/{request_id}/{Path(o['png']).name}"
    return out


def url_policy(cfg: ServiceConfig) -> Any:
    """The :class:`serving.fetch.FetchPolicy` of ``video_url`` inputs under these settings."""
    from serving.fetch import FetchPolicy

    return FetchPolicy(max_bytes=int(cfg.max_upload_mb * 2**20), connect_timeout_s=cfg.url_connect_timeout_s,
                       read_timeout_s=cfg.url_read_timeout_s,
                       allow_networks=FetchPolicy.parse_networks(cfg.url_allow_networks))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the service's side


class JobSystem:
    """What the API process needs: the store, submission, and (by default) broker and workers."""

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.uploads = cfg.job_dir / "uploads"
        self.embedded = EmbeddedBroker(cfg.job_dir / "broker") if not cfg.broker_url else None
        self.app = celery_app(cfg)
        self.store = JobStore.from_config(cfg)
        self.workers = LocalWorkers(cfg)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (or adopt) the embedded broker and local workers, then watch them."""
        self.uploads.mkdir(parents=True, exist_ok=True)
        if self.embedded is not None:
            self.embedded.ensure()
        self.workers.ensure()
        self._thread = threading.Thread(target=self._watch, name="veracity-jobs-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)  # it must not start a worker after the stop
        self.workers.stop()
        if self.embedded is not None:
            self.embedded.stop()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            try:
                if self.embedded is not None:
                    self.embedded.ensure()
                self.workers.ensure()
                for job_id in self.store.unqueued(UNQUEUED_GRACE_S):
                    log.warning("re-queueing job %s: its message never reached the broker", job_id)
                    self._enqueue(job_id)
            except Exception:  # noqa: BLE001 - the watcher must outlive a broker hiccup
                log.warning("job watcher: a check failed", exc_info=True)

    def submit(self, *, upload: Path | None = None, video_url: str | None = None, explain: bool = False,
               filename: str | None = None, owner: str | None = None) -> dict[str, str]:
        """Accept a job: the upload moved under ``job_dir`` and fsynced, the record written,
        the message queued. ``owner`` is the submitting key's id (jobs are listed per key).
        Returns the record as accepted (``queued``), read before the message is sent: a
        worker may claim the job before the client reads the answer.

        Raises:
            JobError: neither or both of upload and URL (400), or the broker is down (503).
        """
        if (upload is None) == (video_url is None):
            raise JobError("bad_request", "send exactly one of a 'video' upload or a 'video_url'")
        job_id = uuid.uuid4().hex
        fields: dict[str, Any] = {"source": "upload" if upload is not None else "url", "explain": int(explain)}
        if owner:
            fields["owner"] = owner
        if upload is not None:
            dest = self.uploads / f"{job_id}.video"
            shutil.move(str(upload), dest)
            with open(dest, "rb+") as f:
                os.fsync(f.fileno())
            _fsync_dir(self.uploads)
            fields["upload"] = str(dest)
            if filename:
                fields["filename"] = filename[:200]
        else:
            fields["url"] = video_url
        try:
            self.store.create(job_id, fields)
            rec = self.store.get(job_id)
            self._enqueue(job_id)
        except redis.RedisError as exc:
            if upload is not None:
                Path(fields["upload"]).unlink(missing_ok=True)
            raise JobError("broker_unavailable", f"the job queue is unavailable ({type(exc).__name__}); "
                                                 "try again", status=503) from None
        assert rec is not None  # just written, and records of queued jobs do not expire
        return rec

    def _enqueue(self, job_id: str) -> None:
        self.app.send_task(TASK, args=[job_id], queue=QUEUE)
        self.store.mark_enqueued(job_id)

    def cancel(self, job_id: str) -> str:
        out = self.store.cancel(job_id)
        if out == "cancelled":
            rec = self.store.get(job_id) or {}
            if rec.get("upload"):
                Path(rec["upload"]).unlink(missing_ok=True)
        return out


class LocalWorkers:
    """``VERACITY_JOB_WORKERS`` ``veracity worker`` processes, restarted when they die.

    Each worker writes its PID file under ``job_dir/workers``; a worker that outlived a killed
    service is adopted by the next one instead of being started twice. With more than one,
    each gets its share of the cores for its torch and OpenCV threads.
    """

    def __init__(self, cfg: ServiceConfig):
        self.cfg = cfg
        self.count = cfg.local_job_workers
        self.dir = cfg.job_dir / "workers"
        self._procs: dict[int, subprocess.Popen] = {}
        self._closed = False

    def command(self, i: int) -> list[str]:
        """The command line of local worker ``i``."""
        cmd = [sys.executable, "-m", "veracity.cli", "worker", "--name", f"local-{i}",
               "--pidfile", str(self.pidfile(i))]
        if self.count > 1:
            from veracity.cores import thread_share

            cmd += ["--threads", str(thread_share(self.count))]
        return cmd

    def pidfile(self, i: int) -> Path:
        return self.dir / f"worker-{i}.pid"

    def pid(self, i: int) -> int | None:
        try:
            return int(self.pidfile(i).read_text().strip())
        except (OSError, ValueError):
            return None

    def ensure(self) -> None:
        if self._closed:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.count):
            proc = self._procs.get(i)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                log.warning("job worker %d exited with %s; starting it again", i, proc.returncode)
                self._procs.pop(i)
            pid = self.pid(i)
            if proc is None and pid is not None and _running(pid) and _is_worker(pid):
                continue  # outlived a previous service: adopted
            self.pidfile(i).unlink(missing_ok=True)
            self._procs[i] = subprocess.Popen(
                self.command(i), stdin=subprocess.DEVNULL, start_new_session=True,
                # A registry download folder of its own: processes downloading the same
                # version into one folder would replace each other's finished copy.
                env={**os.environ, "VERACITY_CACHE_DIR": str(self.cfg.cache_dir / f"worker-{i}")})
            log.info("job worker %d started (pid %d)", i, self._procs[i].pid)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every local worker (adopted ones too), SIGKILL after ``grace_s``.

        A job cut short is delivered again when a worker next runs (late acknowledgement).
        """
        self._closed = True
        pids = [p for p in (self.pid(i) for i in range(self.count)) if p is not None and _is_worker(p)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            for proc in self._procs.values():
                proc.poll()  # reap
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _is_worker(pid: int) -> bool:
    try:
        return b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# ----------------------------------------------------------------------------- the worker's side


class JobRunner:
    """Runs jobs in a worker process with the service's model holders (champion, polled; and
    the challenger when shadow mode or a canary share asks for it, as in the API: a job in the
    canary share is answered by the challenger, and in shadow mode the other model scores the
    same file before it is deleted, logged as a ``shadow`` row of the request log)."""

    def __init__(self, cfg: ServiceConfig):
        from serving.model import ModelHolder
        from veracity.requestlog import RequestLog

        self.cfg = cfg
        self.store = JobStore.from_config(cfg)
        self.requests = RequestLog(cfg.request_log_dir)
        self.model = ModelHolder(cfg)
        self.model.start()
        self.challenger = ModelHolder(cfg, "challenger") if cfg.shadow or cfg.canary_share > 0 else None
        if self.challenger is not None:
            self.challenger.start()
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def run(self, job_id: str) -> str:
        """Run one delivery of a job; returns what became of it (for the worker's log)."""
        outcome = self.store.claim(job_id, self.name, self.cfg.job_max_attempts)
        if outcome in ("missing", "terminal", "busy", "cancelled"):
            if outcome == "cancelled":
                self._cleanup(job_id)
            return outcome
        rec = self.store.get(job_id) or {}
        if outcome == "exhausted":
            self._end(job_id, "failed", error="worker_lost",
                      message=f"the job's worker stopped {self.cfg.job_max_attempts} times while running it")
            return "worker_lost"
        stop = threading.Event()
        cancel = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, stop, cancel), daemon=True)
        beat.start()
        try:
            return self._run(job_id, rec, cancel)
        finally:
            stop.set()
            beat.join(timeout=5)

    def _beat(self, job_id: str, stop: threading.Event, cancel: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(redis.RedisError):
                if self.store.heartbeat(job_id):
                    cancel.set()

    def _run(self, job_id: str, rec: Mapping[str, str], cancel: threading.Event) -> str:
        from celery.exceptions import SoftTimeLimitExceeded

        from serving.admission import admit
        from serving.fetch import FetchError, fetch_url
        from veracity.analyzer import AnalysisStopped

        analyzer = self._wait_for_model(job_id)
        if analyzer is None:
            return self._end(job_id, "failed", error="not_ready",
                             message=f"no model could be loaded: {self.model.reason}")
        (served_by, holder), other = route(self.model, self.challenger if self.challenger is not None and
                                           self.challenger.ready else None,
                                           self.cfg.canary_share, self.cfg.shadow, key=job_id)
        analyzer = holder.analyzer() or analyzer
        loaded = holder.loaded
        self.store.r.hset(self.store.key(job_id), mapping={
            "bundle_sha256": analyzer.identity.get("sha256") or "", "served_by": served_by,
            "registry_version": str(loaded.source.get("registry_version") or "") if loaded else ""})
        path = Path(rec["upload"]) if rec.get("upload") else self.cfg.job_dir / "uploads" / f"{job_id}.download"
        try:
            if rec.get("url"):
                self.store.heartbeat(job_id, "downloading", 0.0)
                try:
                    fetch_url(rec["url"], path, url_policy(self.cfg))
                except FetchError as exc:
                    return self._end(job_id, "failed", error=exc.reason, message=exc.message)
            refusal = admit(path, max_duration_s=self.cfg.job_max_duration_s, max_pixels=self.cfg.max_pixels,
                            duration_setting="VERACITY_JOB_MAX_DURATION_S")
            if refusal is not None:
                return self._end(job_id, "failed", error=refusal.error, message=refusal.message)

            def progress(phase: str, fraction: float) -> None:
                if cancel.is_set() or self.store.heartbeat(job_id, phase, fraction):
                    raise AnalysisStopped("cancelled")

            explain = rec.get("explain") == "1"
            report = analyzer.analyze(path, explain=explain, explain_dir=self.cfg.artifact_dir / job_id if explain
                                      else None, progress=progress)
        except AnalysisStopped:
            return self._end(job_id, "cancelled")
        except SoftTimeLimitExceeded:
            report = None
        # The soft limit can also land inside the analyzer, which reports it as an error.
        if report is None or (report.reason == "error" and "SoftTimeLimitExceeded" in (report.message or "")):
            return self._end(job_id, "failed", error="time_limit",
                             message=f"the job ran past {self.cfg.job_timeout_s:g} s (VERACITY_JOB_TIMEOUT_S)")
        out = public_report(report, job_id, rec.get("filename") or ("url" if rec.get("url") else "upload"))
        out["served_by"] = served_by
        if self._end(job_id, "done", cleanup=False, result=out) == "done":
            self._log(job_id, report, model=served_by)
            shadow_analyzer = other[1].analyzer() if other is not None else None
            if shadow_analyzer is not None:  # the job is answered; the file is still here for the shadow
                self._shadow(job_id, path, report.verdict, other[0], shadow_analyzer)
        self._cleanup(job_id)
        return "done"

    def _shadow(self, job_id: str, path: Path, served_verdict: str, model: str, analyzer: Any) -> None:
        try:
            rep = analyzer.analyze(path)
        except Exception:  # noqa: BLE001 - a shadow never costs a job anything
            log.warning("shadow scoring of job %s failed", job_id, exc_info=True)
            return
        self._log(job_id, rep, model=model, role="shadow", agree=rep.verdict == served_verdict)

    def _wait_for_model(self, job_id: str, timeout_s: float = 120.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while self.model.analyzer() is None and time.monotonic() < deadline:
            self.store.heartbeat(job_id, "waiting_for_model", 0.0)
            time.sleep(1.0)  # the holder's own thread retries the load every VERACITY_POLL_S
        return self.model.analyzer()

    def _end(self, job_id: str, state: str, cleanup: bool = True, **kw: Any) -> str:
        if not self.store.finish(job_id, state, **kw):
            log.info("job %s had already ended; this delivery's outcome (%s) is dropped", job_id, state)
            return "duplicate"
        if cleanup:
            self._cleanup(job_id)
        log.info("job %s %s", job_id, state, extra={"job_id": job_id, "state": state, "error": kw.get("error")})
        return state

    def _cleanup(self, job_id: str) -> None:
        # The upload or download, and a partial download a killed worker left behind.
        for f in (self.cfg.job_dir / "uploads").glob(f"*{job_id}*"):
            f.unlink(missing_ok=True)

    def _log(self, job_id: str, report: Any, **row: Any) -> None:
        """The request-log rows of one analysis of a job (``row``: model, role, agree)."""
        from veracity.requestlog import rows_from_report

        try:
            self.requests.append(rows_from_report(report, request_id=job_id, endpoint="jobs",
                                                  latency_s=float(report.timings.get("total_s", 0.0)), **row))
        except Exception:  # noqa: BLE001 - monitoring never costs a job its result
            log.warning("request log append failed", exc_info=True)


# ----------------------------------------------------------------------------- the Celery app of `-A serving.jobs`

_CFG = ServiceConfig.from_env()
app = celery_app(_CFG)
_runner: JobRunner | None = None


@app.task(name=TASK, bind=True)
def analyze_job(self: Any, job_id: str) -> str:
    """One delivery of job ``job_id`` (idempotent; see the module docstring)."""
    global _runner
    if _runner is None:  # per worker process, after the fork: the model is not shared
        _runner = JobRunner(_CFG)
    return _runner.run(job_id)
