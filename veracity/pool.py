"""Many files through the Analyzer on every core: worker processes, one model load each.

This module owns batch analysis across processes (``veracity analyze DIR``, and any caller
with a list of tasks and a function to run on each with an :class:`~veracity.analyzer.Analyzer`):

- **Processes**: ``workers`` spawned processes (not forked: a child would inherit torch's
  thread pools in an undefined state), each loading the bundle once when it starts. One
  worker runs in the calling process, with no process started and no setting changed.
- **Cores**: each process gets ``cores // workers`` threads for torch and OpenCV
  (:func:`veracity.cores.share_threads`), so the processes share the machine rather than each starting a
  pool of every core and fighting over them. ``"auto"`` (or 0) workers is one per
  :data:`CORES_PER_ANALYSIS` cores, at most one per task (:func:`resolve_workers`).
- **Order**: results come back in the order of the tasks, each as soon as it and every
  task before it are done (a caller can print as it goes).
- **Failures**: a task is never a traceback and never stops the rest. A task function that
  raises gets the caller's ``on_error`` result instead (for :func:`analyze_files`, an
  ``ABSTAIN`` report with reason ``error`` and a one-line message). A process that dies
  (killed, out of memory, a crash in a native decoder) breaks the executor: the tasks it
  may have held are run again one at a time in a fresh pool, so the one that kills its
  process is named and gets ``on_error``, and the rest are judged. Only a bundle that cannot
  be loaded (raised as in the calling process, e.g. :class:`~veracity.bundle.BundleError`),
  or processes that die with no file in hand (:class:`PoolError`), end the run.

The per-task hook (:func:`run_tasks`'s ``fn`` and ``on_error``, module-level functions
taking the process's Analyzer) is what lets every other batch use the same pool: the
benchmark's and the ensemble's rows (:func:`veracity.stages.benchmark.analyse_clips`), the
monitor's simulated stream (:mod:`monitoring.simulate`) and the OOD bench.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from veracity.cores import available_cores, share_threads, thread_share

if TYPE_CHECKING:
    from veracity.analyzer import Analyzer, Report
    from veracity.config import AnalyzeConfig

__all__ = ["CORES_PER_ANALYSIS", "PoolError", "analyze_files", "auto_workers", "failed_report", "resolve_workers",
           "run_tasks"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
TaskFn = Callable[["Analyzer", T], R]
ErrorFn = Callable[["Analyzer", T, str], R]

# A process per core: one with a single core's share (one thread for torch, OpenCV and
# FFmpeg, share_threads) keeps 0.97 cores busy, and on 2 cores two of them analysed 1.12x
# as many clips per second as one process using both cores (bench/analyze_dir.py: one
# process keeps only 1.75 cores busy, its decoding, detection and scoring threads waiting
# on each other). Each process holds its own model (about 1 GB resident on CPU).
CORES_PER_ANALYSIS = 1

DIED = ("the process analysing it died (killed, out of memory, or a crash in a native library); "
        "the other files were analysed")


class PoolError(RuntimeError):
    """The worker processes die even with no file in hand (the message says what was tried)."""


def auto_workers() -> int:
    """Processes that use this machine's cores without fighting over them: one per
    :data:`CORES_PER_ANALYSIS` cores, at least one."""
    return max(1, available_cores() // CORES_PER_ANALYSIS)


def resolve_workers(workers: int | str, n_tasks: int) -> int:
    """The number of processes for ``n_tasks``: ``"auto"`` or 0 is :func:`auto_workers`;
    never more than there are tasks, never fewer than one.

    Raises:
        ValueError: ``workers`` is neither ``auto`` nor a whole number >= 0.
    """
    if isinstance(workers, str):
        text = workers.strip().lower()
        if text == "auto":
            workers = 0
        elif text.isdigit():
            workers = int(text)
        else:
            raise ValueError(f"workers must be auto or a whole number >= 0, got {workers!r}")
    if workers < 0:
        raise ValueError(f"workers must be auto or a whole number >= 0, got {workers}")
    wanted = workers or auto_workers()
    return max(1, min(wanted, n_tasks))


# --------------------------------------------------------------------------- worker side

_ANALYZER: Any = None
_INIT_ERROR: Exception | None = None


def _init_worker(bundle: str, device: str, runtime: str, cfg: AnalyzeConfig | None, threads: int) -> None:
    global _ANALYZER, _INIT_ERROR
    from veracity.analyzer import Analyzer

    try:
        share_threads(threads)
        _ANALYZER = Analyzer(bundle, device=device, runtime=runtime, cfg=cfg)
    except Exception as exc:  # noqa: BLE001 - kept for the first task: the executor loses an initializer's error
        _INIT_ERROR = exc


def _apply(analyzer: Any, fn: TaskFn, on_error: ErrorFn, task: Any, failure: str | None) -> Any:
    """``fn``'s result for ``task``, or ``on_error``'s when ``fn`` raises or ``failure`` is given."""
    if failure is not None:
        return on_error(analyzer, task, failure)
    try:
        return fn(analyzer, task)
    except Exception as exc:  # noqa: BLE001 - one task's failure is its result, not a stopped run
        log.warning("task %r failed", task, exc_info=True)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return on_error(analyzer, task, f"{type(exc).__name__}: {text}")


def _run_in_worker(fn: TaskFn, on_error: ErrorFn, task: Any, failure: str | None) -> Any:
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    return _apply(_ANALYZER, fn, on_error, task, failure)


# --------------------------------------------------------------------------- caller side


def run_tasks(tasks: Sequence[T], fn: TaskFn, bundle: Path | str, *, on_error: ErrorFn,
              workers: int | str = "auto", device: str = "auto", runtime: str = "torch",
              cfg: AnalyzeConfig | None = None,
              progress: Callable[[int, int], None] | None = None) -> Iterator[R]:
    """Run ``fn(analyzer, task)`` for every task in worker processes; results in task order.

    Args:
        tasks: picklable task descriptions.
        fn: a module-level function (it is sent to the processes by name) given the
            process's Analyzer and one task.
        bundle: the bundle directory each process loads.
        on_error: a module-level function ``(analyzer, task, message)`` whose result stands
            for a task that raised or whose process died.
        workers: processes (see :func:`resolve_workers`); one runs here, in this process.
        device, runtime, cfg: the Analyzer's settings.
        progress: called with (tasks done, tasks) as each one ends, in any order.

    Yields:
        One result per task, in the order of ``tasks``.

    Raises:
        BundleError: the bundle cannot be loaded (as :class:`~veracity.analyzer.Analyzer` raises).
        PoolError: the processes keep dying without a task to blame.
    """
    tasks = list(tasks)
    n = resolve_workers(workers, len(tasks))
    if not tasks:
        return
    if n == 1:
        yield from _in_process(tasks, fn, on_error, bundle, device, runtime, cfg, progress)
        return
    init = (str(bundle), device, runtime, cfg, thread_share(n))
    yield from _pooled(tasks, fn, on_error, init, n, progress)


def _in_process(tasks: list, fn: TaskFn, on_error: ErrorFn, bundle: Path | str, device: str, runtime: str,
                cfg: AnalyzeConfig | None, progress: Callable[[int, int], None] | None) -> Iterator[Any]:
    from veracity.analyzer import Analyzer

    analyzer = Analyzer(bundle, device=device, runtime=runtime, cfg=cfg)
    for i, task in enumerate(tasks):
        result = _apply(analyzer, fn, on_error, task, None)
        if progress:
            progress(i + 1, len(tasks))
        yield result


def _new_pool(workers: int, init: tuple) -> ProcessPoolExecutor:
    # spawn: a forked child would inherit torch's thread pools in an undefined state.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=init)


def _pooled(tasks: list, fn: TaskFn, on_error: ErrorFn, init: tuple, workers: int,
            progress: Callable[[int, int], None] | None) -> Iterator[Any]:
    """The scheduler: at most ``workers`` tasks in flight, so that when a process dies the
    tasks it may have held are known; those are then run alone, one at a time, to find
    the one that kills its process (it gets ``on_error`` with :data:`DIED`)."""
    # (task index, failure message or None); ``solo`` items run with nothing else in flight.
    queue: deque[tuple[int, str | None]] = deque((i, None) for i in range(len(tasks)))
    solo: deque[tuple[int, str | None]] = deque()
    results: dict[int, Any] = {}
    inflight: dict[Future, tuple[int, str | None]] = {}
    emitted = 0
    pool = _new_pool(workers, init)

    def submit(item: tuple[int, str | None]) -> None:
        inflight[pool.submit(_run_in_worker, fn, on_error, tasks[item[0]], item[1])] = item

    def keep(item: tuple[int, str | None], result: Any) -> None:
        results[item[0]] = result
        if progress:
            progress(len(results) + emitted, len(tasks))

    try:
        while emitted < len(tasks):
            if solo:
                if not inflight:
                    submit(solo.popleft())
            else:
                while queue and len(inflight) < workers:
                    submit(queue.popleft())
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            broken = False
            for fut in finished:
                if isinstance(fut.exception(), BrokenProcessPool):
                    broken = True
                else:
                    keep(inflight.pop(fut), fut.result())  # any other exception: a bundle that will not load
            if broken:
                # Every future still in flight fails with the pool; those that ended before it are kept.
                pool.shutdown(wait=True, cancel_futures=True)
                lost = []
                for fut, item in inflight.items():
                    if fut.exception() is None:
                        keep(item, fut.result())
                    else:
                        lost.append(item)
                inflight.clear()
                if len(lost) == 1:  # it ran alone: its own process died on it
                    index, failure = lost[0]
                    if failure is not None:
                        raise PoolError(f"the analysis processes die even when only writing a failed file's "
                                        f"report ({failure}); is memory short? try fewer workers")
                    log.warning("the process analysing %r died; it gets an error result", tasks[index])
                    solo.appendleft((index, DIED))
                else:
                    log.warning("an analysis process died; %d tasks it may have held run again, one at a time",
                                len(lost))
                    solo.extendleft(sorted(lost, reverse=True))
                pool = _new_pool(workers, init)
            while emitted in results:
                result = results.pop(emitted)
                emitted += 1
                yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- analysis of files


def _analyze_task(analyzer: Analyzer, task: tuple[str, bool, str | None]) -> Report:
    path, explain, explain_dir = task
    return analyzer.analyze(path, explain=explain, explain_dir=Path(explain_dir) if explain_dir else None)


def failed_report(analyzer: Analyzer, path: Path | str, message: str) -> Report:
    """The ABSTAIN ``error`` report of a file whose analysis could not end (as the Analyzer
    writes one for a failure inside it: the call's thresholds and the bundle's identity)."""
    from veracity.analyzer import Report

    th = analyzer.bundle.thresholds_for()
    return Report(path=str(path), verdict="ABSTAIN", probability=None, reason="error",
                  message=f"analysis failed: {message}"[:500],
                  thresholds={"real_below": float(th.real_below), "fake_at": float(th.fake_at)},
                  bundle=dict(analyzer.identity))


def _analysis_failed(analyzer: Analyzer, task: tuple[str, bool, str | None], message: str) -> Report:
    return failed_report(analyzer, task[0], message)


def analyze_files(paths: Sequence[Path | str], bundle: Path | str, *, workers: int | str = "auto",
                  device: str = "auto", runtime: str = "torch", cfg: AnalyzeConfig | None = None,
                  explain: bool = False, explain_dirs: Sequence[Path | None] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Iterator[Report]:
    """Analyse files in ``workers`` processes; one :class:`~veracity.analyzer.Report` per file, in order.

    A file that cannot be judged gets the Analyzer's ABSTAIN with its reason; one whose
    analysis fails or kills its process gets ABSTAIN ``error``; the rest go on.

    Args:
        paths: the files.
        bundle: the bundle directory (each process loads it once).
        workers: ``"auto"`` (:func:`auto_workers`, at most one per file), or a number; 1 analyses here.
        device, runtime, cfg: the Analyzer's settings.
        explain: add explanations (:meth:`~veracity.analyzer.Analyzer.analyze`).
        explain_dirs: with ``explain``, where each file's overlays go (None: none written).
        progress: called with (files done, files) as each one ends.

    Raises:
        BundleError: the bundle cannot be loaded.
        PoolError: the processes keep dying without a file to blame.
    """
    dirs = list(explain_dirs) if explain_dirs is not None else [None] * len(paths)
    if len(dirs) != len(paths):
        raise ValueError(f"{len(paths)} paths but {len(dirs)} explain_dirs")
    tasks = [(str(p), explain, str(d) if d is not None else None) for p, d in zip(paths, dirs, strict=True)]
    return run_tasks(tasks, _analyze_task, bundle, on_error=_analysis_failed, workers=workers, device=device,
                     runtime=runtime, cfg=cfg, progress=progress)
