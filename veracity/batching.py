"""Windows from concurrent analyses in one forward pass: the members' micro-batcher.

Each analysis hands its batches of windows to :meth:`WindowBatcher.run` and waits; one
thread takes what is queued, joins the batches that ask for the same members (up to
``max_windows`` windows), runs :meth:`veracity.bundle.Bundle.forward` once and hands each
caller its rows back. The wait is bounded and only spent when it can pay: the thread waits
(at most ``max_wait_s``) for more windows only while more analyses are in their scoring
phase than have already queued, so a lone request is never delayed.

Results are the same as unbatched ones up to float summation order (the members are in
eval mode: nothing depends on what else is in the batch).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields

import torch

from veracity.bundle import MemberOutput
from veracity.models.base import Batch

Forward = Callable[[Batch, Sequence[str]], dict[str, MemberOutput]]


def concat(batches: Sequence[Batch]) -> Batch:
    """One batch with the rows of ``batches`` in order (fields that are None everywhere stay None)."""
    out = {}
    for f in fields(Batch):
        parts = [getattr(b, f.name) for b in batches]
        if all(p is None for p in parts):
            out[f.name] = None
        elif any(p is None for p in parts):
            raise ValueError(f"batches disagree on field {f.name!r}: present in some, None in others")
        else:
            out[f.name] = torch.cat(parts, dim=0)
    return Batch(**out)


@dataclass
class _Item:
    batch: Batch
    members: tuple[str, ...]
    future: Future


class WindowBatcher:
    """A forward-pass queue shared by the threads of one process (see the module docstring).

    Args:
        forward: the members' forward pass (``Bundle.forward``), run on the batcher's thread.
        max_windows: most windows in one forward pass.
        max_wait_s: longest a queued batch waits for company.
        lock: held around each forward pass (the analyzer's: Grad-CAM hooks must not see
            other callers' windows).
    """

    def __init__(self, forward: Forward, max_windows: int = 64, max_wait_s: float = 0.01,
                 lock: threading.Lock | None = None):
        if max_windows < 1 or max_wait_s < 0:
            raise ValueError("max_windows must be >= 1 and max_wait_s >= 0")
        self.forward = forward
        self.max_windows = int(max_windows)
        self.max_wait_s = float(max_wait_s)
        self.lock = lock or threading.Lock()
        self._q: queue.Queue[_Item | None] = queue.Queue()
        self._scoring = 0
        self._count_lock = threading.Lock()
        self._closed = False
        self.passes = 0  # forward passes run
        self.windows = 0  # windows they carried
        self._thread = threading.Thread(target=self._loop, name="veracity-batcher", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """Mark a caller as about to submit windows (the batcher waits for it, briefly)."""
        with self._count_lock:
            self._scoring += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._scoring -= 1

    def run(self, batch: Batch, members: Sequence[str]) -> dict[str, MemberOutput]:
        """The members' outputs for ``batch``, computed in a shared forward pass."""
        if self._closed:  # a caller still holding a replaced analyzer: run it here
            with self.lock:
                return self.forward(batch, tuple(members))
        fut: Future = Future()
        self._q.put(_Item(batch, tuple(members), fut))
        return fut.result()

    def close(self) -> None:
        """Stop the thread once what is queued has run; later callers run on their own thread."""
        self._closed = True
        self._q.put(None)

    def _loop(self) -> None:
        held: list[_Item] = []  # items for other member sets, served next
        while True:
            first = held.pop(0) if held else self._q.get()
            if first is None:
                # Whatever was queued behind the sentinel still gets its answer.
                while True:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        return
                    if item is not None:
                        self._run([item], item.batch.size)
            group, n = [first], first.batch.size
            deadline = time.monotonic() + self.max_wait_s
            while n < self.max_windows:
                with self._count_lock:
                    others_coming = self._scoring > len(group)
                timeout = deadline - time.monotonic() if others_coming else 0.0
                try:
                    item = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._q.put(None)  # stop after this pass
                    break
                if item.members != first.members or n + item.batch.size > self.max_windows:
                    held.append(item)
                    if n + item.batch.size > self.max_windows:
                        break
                    continue
                group.append(item)
                n += item.batch.size
            self._run(group, n)

    def _run(self, group: list[_Item], n: int) -> None:
        try:
            batch = group[0].batch if len(group) == 1 else concat([g.batch for g in group])
            with self.lock:
                out = self.forward(batch, group[0].members)
            self.passes += 1
            self.windows += n
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            for g in group:
                g.future.set_exception(exc)
            return
        start = 0
        for g in group:
            stop = start + g.batch.size
            g.future.set_result({k: v.rows(start, stop) for k, v in out.items()})
            start = stop
