"""Rolling a challenger out: which model answers a request (canary), and shadow scoring.

- **Canary**: ``VERACITY_CANARY_SHARE`` of requests are answered by the challenger and marked
  ``served_by: challenger`` in the answer and the request log. A meeting participant's
  batches all go to the same model (the share is taken on a hash of the participant id),
  so their running verdict never mixes two bundles.
- **Shadow** (``VERACITY_SHADOW=true``): after a request is answered, the other model scores
  the same input on a single background thread; its verdict, probability and whether it
  agrees with the served verdict go to the request log (``role=shadow``), never to the
  answer. The backlog is bounded: past :data:`MAX_BACKLOG` waiting inputs a request is not
  shadowed (counted as skipped), so shadowing can slow the service by at most one
  analysis's worth of CPU, and never fills memory or disk.

The running agreement rate is kept here and shown by ``GET /model`` and ``/metrics``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import bentoml

log = logging.getLogger("serving.shadow")

MAX_BACKLOG = 8
T = TypeVar("T")

SHADOW = bentoml.metrics.Counter(name="veracity_shadow_total", documentation="Shadow comparisons, by agreement",
                                 labelnames=["endpoint", "agree"])
SHADOW_SKIPPED = bentoml.metrics.Counter(name="veracity_shadow_skipped_total",
                                         documentation="Requests not shadowed (backlog full or shadow failed)",
                                         labelnames=["endpoint"])
AGREEMENT = bentoml.metrics.Gauge(name="veracity_shadow_agreement_ratio",
                                  documentation="Share of shadow comparisons where both models gave the same verdict")
SERVED_BY = bentoml.metrics.Counter(name="veracity_served_by_total", documentation="Answers by model (canary)",
                                    labelnames=["endpoint", "model"])


def canary_pick(share: float, key: str | None = None, draw: Callable[[], float] = random.random) -> bool:
    """Whether this request goes to the challenger: a hash of ``key`` when given (sticky), else a draw."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    if key is not None:
        h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        return h < share
    return draw() < share


def route(champion: T, challenger: T | None, share: float, shadow: bool,
          key: str | None = None) -> tuple[tuple[str, T], tuple[str, T] | None]:
    """The canary and shadow rules: ``(model, slot)`` that answers, and the ``(model, slot)``
    that shadows it (None without shadow mode or a challenger). Used by the API and the job
    workers alike, with analyzers or model holders as slots."""
    served, other = ("champion", champion), (("challenger", challenger) if challenger is not None else None)
    if other is not None and canary_pick(share, key):
        served, other = other, served
    return served, (other if shadow else None)


class Shadow:
    """The shadow scorer and its running agreement (thread-safe)."""

    def __init__(self, log_rows: Callable[[list[dict]], None]):
        self._log_rows = log_rows
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="veracity-shadow")
        self._lock = threading.Lock()
        self.waiting = 0
        self.compared = 0
        self.agreed = 0
        self.skipped = 0
        self.failed = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rate = self.agreed / self.compared if self.compared else None
            return {"compared": self.compared, "agreed": self.agreed, "agreement_rate": rate,
                    "skipped": self.skipped, "failed": self.failed, "waiting": self.waiting}

    def _reserve(self, endpoint: str) -> bool:
        with self._lock:
            if self.waiting >= MAX_BACKLOG:
                self.skipped += 1
                SHADOW_SKIPPED.labels(endpoint=endpoint).inc()
                return False
            self.waiting += 1
            return True

    def submit(self, endpoint: str, served_verdict: str, score: Callable[[], Any],
               rows: Callable[[Any, bool, float], list[dict]], cleanup: Callable[[], None] | None = None) -> bool:
        """Run ``score()`` later; log ``rows(report, agree, latency_s)``. False when skipped."""
        if not self._reserve(endpoint):
            if cleanup is not None:
                cleanup()
            return False

        def run() -> None:
            t0 = time.perf_counter()
            try:
                report = score()
                verdict = report.verdict if hasattr(report, "verdict") else report.get("verdict")
                agree = verdict == served_verdict
                self._log_rows(rows(report, agree, time.perf_counter() - t0))
                with self._lock:
                    self.compared += 1
                    self.agreed += int(agree)
                    AGREEMENT.set(self.agreed / self.compared)
                SHADOW.labels(endpoint=endpoint, agree=str(agree).lower()).inc()
            except Exception:  # noqa: BLE001 - a shadow never costs the service anything
                with self._lock:
                    self.failed += 1
                SHADOW_SKIPPED.labels(endpoint=endpoint).inc()
                log.warning("shadow scoring failed", exc_info=True)
            finally:
                with self._lock:
                    self.waiting -= 1
                if cleanup is not None:
                    cleanup()

        self._pool.submit(run)
        return True

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def keep_copy(path: Path) -> tuple[Path, Callable[[], None]]:
    """A link (or copy) of an upload the request will delete, and the function that removes it."""
    folder = Path(tempfile.mkdtemp(prefix="veracity-shadow-"))
    dest = folder / "video"
    try:
        os.link(path, dest)
    except OSError:
        import shutil

        shutil.copyfile(path, dest)

    def cleanup() -> None:
        with contextlib.suppress(OSError):
            dest.unlink(missing_ok=True)
            folder.rmdir()

    return dest, cleanup
