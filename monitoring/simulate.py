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

import shutil
from collections.abc import Callable
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


def _rows(analyzer: Any, task: tuple[str, str, str]) -> list[dict[str, Any]]:
    return _logged(analyzer.analyze(Path(task[0])), task)


def _rows_failed(analyzer: Any, task: tuple[str, str, str], message: str) -> list[dict[str, Any]]:
    """What the log holds for a clip whose analysis raised or killed its process."""
    from veracity.pool import failed_report

    return _logged(failed_report(analyzer, task[0], message), task)


def _logged(report: Any, task: tuple[str, str, str]) -> list[dict[str, Any]]:
    from veracity.requestlog import rows_from_report

    _, request_id, at = task
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

    from veracity.pool import run_tasks

    for rows in run_tasks(tasks, _rows, bundle, on_error=_rows_failed, workers=max(1, workers), device="cpu"):
        keep(rows)
    return n
