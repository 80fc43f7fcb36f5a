"""Analysis of many files in worker processes: order, failures as ABSTAIN, the same reports as one process.

The bundle is the session's ``tiny_bundle`` (tests/conftest.py); the files are clips of the
tiny corpus, random bytes and a path that does not exist. The task functions below are
module-level so that the spawned processes can import them by name.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from veracity.bundle import BundleError
from veracity.cores import available_cores, share_threads, thread_share
from veracity.pool import (
    DIED,
    analyze_files,
    auto_workers,
    resolve_workers,
    run_tasks,
)


def _videos(tiny_corpus: Path, n: int) -> list[Path]:
    return sorted((tiny_corpus / "videos").glob("*.mp4"))[:n]


def _name_or_fail(analyzer, task: str) -> str:
    if task == "raise":
        raise OSError("disk gone\nsecond line")
    if task == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{task}:{analyzer.identity['sha256'][:8]}"


def _failed(analyzer, task: str, message: str) -> str:
    return f"{task} failed: {message}"


def test_auto_workers_are_one_per_core_at_most_one_per_task() -> None:
    cores = available_cores()
    assert resolve_workers("auto", 100) == resolve_workers(0, 100) == auto_workers() == cores
    assert resolve_workers("auto", 1) == 1 and resolve_workers(8, 3) == 3 and resolve_workers(" 2 ", 5) == 2
    assert resolve_workers(4, 0) == 1
    assert thread_share(1) == cores and thread_share(cores * 4) == 1
    for bad in ("many", -1, "-1"):
        with pytest.raises(ValueError, match="auto or a whole number"):
            resolve_workers(bad, 4)


def test_reports_keep_the_input_order_a_bad_file_abstains_and_two_workers_match_one(
        tiny_bundle: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    a, b, c = _videos(tiny_corpus, 3)
    corrupt = tmp_path / "random.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    paths = [a, corrupt, b, tmp_path / "gone.mp4", c]
    seen: list[tuple[int, int]] = []
    two = list(analyze_files(paths, tiny_bundle, workers=2, device="cpu",
                             progress=lambda done, total: seen.append((done, total))))
    assert [r.path for r in two] == [str(p) for p in paths]
    assert [r.reason for r in two] == [None, "corrupt", None, "missing", None]
    assert all(r.verdict != "ABSTAIN" and r.probability is not None for r in (two[0], two[2], two[4]))
    assert two[1].verdict == "ABSTAIN" and two[1].message and two[1].probability is None
    assert seen == [(i, 5) for i in range(1, 6)]

    one = list(analyze_files(paths, tiny_bundle, workers=1, device="cpu"))
    assert [r.verdict for r in two] == [r.verdict for r in one]
    assert [r.reason for r in two] == [r.reason for r in one]
    assert [r.probability for r in two] == pytest.approx([r.probability for r in one], abs=1e-6)
    for r1, r2 in zip(one, two, strict=True):
        assert {k: m["probability"] for k, m in r2.members.items()} == pytest.approx(
            {k: m["probability"] for k, m in r1.members.items()}, abs=1e-6)
        assert r2.bundle == r1.bundle and r2.thresholds == r1.thresholds


def test_a_task_that_raises_or_kills_its_process_gets_its_error_result_and_the_rest_go_on(tiny_bundle: Path) -> None:
    tasks = ["a", "raise", "die", "b"]
    got = list(run_tasks(tasks, _name_or_fail, tiny_bundle, on_error=_failed, workers=2, device="cpu"))
    sha = got[0].split(":")[1]
    assert got[0] == f"a:{sha}" and got[3] == f"b:{sha}"
    assert got[1] == "raise failed: OSError: disk gone"  # the first line only
    assert got[2] == f"die failed: {DIED}"


def test_a_bundle_that_cannot_load_raises_as_in_one_process(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle.json"):
        list(analyze_files([tmp_path / "a.mp4", tmp_path / "b.mp4"], tmp_path / "none", workers=2, device="cpu"))


def test_a_process_given_one_core_decodes_on_one_thread(tiny_corpus: Path) -> None:
    import cv2
    import torch

    from veracity.media import decode
    from veracity.media.decode import FrameReader

    video = _videos(tiny_corpus, 1)[0]
    before = torch.get_num_threads(), cv2.getNumThreads(), decode._THREADS
    try:
        share_threads(1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
        with FrameReader(video, 12.5) as one:
            assert one.threads is False
        share_threads(2)
        with FrameReader(video, 12.5) as many, FrameReader(video, 12.5, threads=False) as told:
            assert many.threads is True and told.threads is False  # an explicit choice still wins
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        decode.set_decode_threads(before[2])
