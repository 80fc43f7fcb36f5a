"""Simulated request streams: what the service would log for generated people, shifted or not.

This module owns how a stream is made (no real data): new people from the project's
generator (the ``generate`` section with another seed, so the method mix is the training
corpus's), optionally under a shift, every clip analysed by the real
:class:`veracity.analyzer.Analyzer` and logged with :func:`veracity.requestlog.rows_from_report`
into a :class:`~veracity.requestlog.RequestLog`, one request every ``step_s`` seconds of a
simulated clock (so the same stream is the same rows).

Shifts (:data:`SHIFTS`): ``none``; ``lowres`` (the same people rendered at
:data:`LOWRES` px square instead of the generator's size: smaller faces); and the
transforms of :mod:`monitoring.shifts` (``heavy_compression``, ``lighting``,
``face_style``, ``voice``). The generator has no manipulation method outside the six the
bundle is trained on, so a voice model it never heard (``voice``) and a face style it
never saw (``face_style``) stand for a new generation method.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.shifts import TRANSFORMS, make_shift, manifest_rows

LOWRES = 96
SHIFTS = ("none", "lowres", *(t for t in TRANSFORMS if t != "control"))
START = datetime(2026, 1, 1, tzinfo=UTC)  # the simulated clock's first request


class SimulationError(ValueError):
    """A stream that cannot be simulated as asked (the message says why)."""


def stream_corpus(gen: Any, seed: int, people: int, work: Path | str, side: int | None = None,
                  avoid: tuple[int, ...] = ()) -> Path:
    """Generate ``people`` new people with the ``generate`` section ``gen`` and ``seed``.

    Args:
        gen: a :class:`veracity.config.GenerateConfig`.
        seed: the corpus seed; must not be in ``avoid`` (the training and benchmark seeds).
        people: identities (at least 3: fakes borrow a second person from the same split).
        work: where the corpus is written (``work/seed<seed>_<side>px``; reused when up to date).
        side: frame side in px (default: the generator's size).

    Returns:
        The corpus directory (clips and ``manifest.csv``).
    """
    from veracity.config import GenerateConfig
    from veracity.stages.generate import generate

    if seed == gen.seed or seed in avoid:
        raise SimulationError(f"seed {seed} is the training or benchmark corpus's: a stream needs new people")
    size = {"width": side, "height": side} if side else {}
    cfg = GenerateConfig(**{**gen.model_dump(), "seed": seed, "n_identities": people, **size})
    out = Path(work) / f"seed{seed}_people{people}_{cfg.width}px"
    generate(cfg, out)
    return out


def shifted_corpus(shift: str, gen: Any, seed: int, people: int, work: Path | str,
                   avoid: tuple[int, ...] = ()) -> Path:
    """The corpus of a stream under ``shift`` (one of :data:`SHIFTS`)."""
    if shift not in SHIFTS:
        raise SimulationError(f"unknown shift {shift!r}; expected one of {', '.join(SHIFTS)}")
    if shift == "lowres":
        return stream_corpus(gen, seed, people, work, side=LOWRES, avoid=avoid)
    base = stream_corpus(gen, seed, people, work, avoid=avoid)
    return base if shift == "none" else make_shift(shift, base, base.parent / f"{base.name}_shifts", gen)


_ANALYZER: Any = None


def init_worker(bundle: str, threads: int | None) -> None:
    """Load the process's Analyzer (CPU, ``threads`` threads for torch, OpenCV and FFmpeg):
    a pool's initializer."""
    global _ANALYZER
    from veracity.analyzer import Analyzer
    from veracity.cores import share_threads

    if threads:
        share_threads(threads)  # torch, OpenCV and FFmpeg get this process's share of the cores
    _ANALYZER = Analyzer(bundle, device="cpu")


def analysed(func: Callable[[Any], Any], tasks: list[Any], bundle: Path | str, workers: int) -> Iterator[Any]:
    """``func(task)`` for every task in order, each process with its Analyzer (:func:`worker_analyzer`);
    ``workers`` processes (1: this one)."""
    if workers <= 1:
        init_worker(str(bundle), None)
        yield from map(func, tasks)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)  # the cores shared out, not oversubscribed
    # spawn: a forked child would inherit torch's thread pools in an undefined state.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                             initargs=(str(bundle), threads)) as pool:
        yield from pool.map(func, tasks, chunksize=2)


def worker_analyzer() -> Any:
    """The Analyzer :func:`init_worker` loaded in this process."""
    return _ANALYZER


def _rows(task: tuple[str, str, str]) -> list[dict[str, Any]]:
    from veracity.requestlog import rows_from_report

    path, request_id, at = task
    report = worker_analyzer().analyze(Path(path))
    # No latency: a batch in worker processes says nothing of a service's, and a clock
    # reading would make the stage's log (and every report on it) differ run to run.
    return rows_from_report(report, request_id=request_id, endpoint="simulate", latency_s=None,
                            at=datetime.fromisoformat(at))


def analyse_stream(bundle: Path | str, corpus: Path | str, log_dir: Path | str, *, order_seed: int = 0,
                   per_person: int | None = None, start: datetime = START, step_s: float = 60.0, workers: int = 1,
                   progress: Callable[[int, int], None] | None = None) -> int:
    """Analyse the clips of ``corpus`` (in a seeded random order) into a fresh request log.

    ``per_person``: only that many clips of each person (drawn with ``order_seed``). The
    generator makes five clips a person, and rows of one person are not independent (their
    lighting, voice, face size): a window of few people is a sample of few people, and the
    tests, which take rows as independent, would see their quirks as drift. Traffic spans
    many people; one clip each is the closer stand-in.

    ``log_dir`` is emptied first: a stream is its own log. Returns the rows written.
    """
    from veracity.requestlog import RequestLog

    corpus, log_dir = Path(corpus), Path(log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)
    recs = manifest_rows(corpus)
    rng = np.random.default_rng(order_seed)
    if per_person is not None:
        by_person: dict[str, list[dict[str, Any]]] = {}
        for rec in recs:
            by_person.setdefault(str(rec["identity"]), []).append(rec)
        recs = [rec for person in sorted(by_person) for rec in
                (by_person[person][i] for i in sorted(rng.permutation(len(by_person[person]))[:per_person]))]
    order = rng.permutation(len(recs))
    tasks = [(str(corpus / recs[i]["path"]), f"sim-{recs[i]['video_id']}",
              (start + timedelta(seconds=step_s * k)).isoformat()) for k, i in enumerate(order)]
    rlog = RequestLog(log_dir)
    n = 0

    def keep(rows: list[dict[str, Any]]) -> None:
        nonlocal n
        n += rlog.append(rows)
        if progress is not None:
            progress(n, len(tasks))

    for rows in analysed(_rows, tasks, bundle, workers):
        keep(rows)
    return n
