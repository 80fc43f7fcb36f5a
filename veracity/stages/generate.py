"""The ``generate`` stage: the embedded synthetic corpus, written only when out of date.

:func:`generate` writes the training corpus (``data/raw``); :func:`benchmark_corpus`
writes the benchmark's (``data/benchmark``): other people, every method for each.

A stamp beside the corpus (``.<name>.generated.json``) holds the fingerprint of the
generator's code and config; the same fingerprint means the same bytes, so an up-to-date
corpus is left alone. A folder that the generator did not write (a real dataset placed
where the synthetic corpus goes) is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veracity.config import BenchmarkConfig, GenerateConfig, to_plain
from veracity.corpus import synth
from veracity.corpus.synth.generate import IDENTITIES_NAME, MANIFEST_NAME
from veracity.corpus.synth.generate import generate as write_corpus
from veracity.media import encode
from veracity.stages import StageError


@dataclass(frozen=True)
class GenerateOutcome:
    """What :func:`generate` did: ``n_clips`` and ``counts`` by method (empty when skipped)."""

    out: Path
    fingerprint: str
    skipped: bool
    n_clips: int
    counts: dict[str, int]


def stamp_path(out: Path) -> Path:
    """Where the generator's fingerprint for ``out`` is kept."""
    return out.parent / f".{out.name}.generated.json"


def fingerprint(cfg: GenerateConfig) -> str:
    """Hash of the generator's code and its output-changing config: same hash, same bytes."""
    h = hashlib.sha256(json.dumps(to_plain(cfg, exclude=cfg.EXECUTION_ONLY), sort_keys=True).encode())
    files = sorted(Path(synth.__file__).parent.glob("*.py")) + [Path(encode.__file__)]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def generate(cfg: GenerateConfig, out: Path, *, force: bool = False,
             progress: Callable[[int, int], None] | None = None) -> GenerateOutcome:
    """Write the synthetic corpus (MP4 clips, ``manifest.csv``, ``identities.json``) to ``out``.

    Args:
        cfg: the ``generate`` section.
        out: the corpus directory (``data/raw``).
        force: regenerate even when the stamp says the corpus is up to date, and write
            over a folder the generator did not write.
        progress: ``progress(done, total)`` called per clip.

    Raises:
        StageError: ``out`` holds files the generator did not write (and not ``force``).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / IDENTITIES_NAME).exists() and not force:
        raise StageError(f"{out} holds files that `veracity generate` did not write; use another --out or --force")
    fp = fingerprint(cfg)
    stamp = stamp_path(out)
    up_to_date = (stamp.exists() and (out / MANIFEST_NAME).exists()
                  and json.loads(stamp.read_text()).get("fingerprint") == fp)
    if up_to_date and not force:
        return GenerateOutcome(out, fp, skipped=True, n_clips=json.loads(stamp.read_text()).get("n_clips", 0),
                               counts={})
    result = write_corpus(cfg, out, progress=progress)
    stamp.write_text(json.dumps({"fingerprint": fp, "n_clips": result.n_clips}))
    return GenerateOutcome(out, fp, skipped=False, n_clips=result.n_clips, counts=dict(result.counts))


def benchmark_corpus(generate_cfg: GenerateConfig, cfg: BenchmarkConfig, out: Path, *,
                     progress: Callable[[int, int], None] | None = None) -> GenerateOutcome:
    """Write the benchmark corpus to ``out``: ``generate_cfg`` with ``cfg``'s seed and people,
    every method for every person (skipped when up to date, as :func:`generate` does).

    Raises:
        StageError: ``benchmark.seed`` equals ``generate.seed`` (the benchmark would show the
            bundle the people it was trained on), or as :func:`generate`.
    """
    if cfg.seed == generate_cfg.seed:
        raise StageError(f"benchmark.seed ({cfg.seed}) equals generate.seed: the benchmark would hold the "
                         "training people; choose another seed")
    return generate(cfg.corpus(generate_cfg), Path(out), progress=progress)
