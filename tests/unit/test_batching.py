"""Tests of veracity.batching: concurrent callers share forward passes and get their own rows back."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from veracity.batching import WindowBatcher, concat
from veracity.bundle import MemberOutput
from veracity.models.base import Batch


def _batch(values: list[float]) -> Batch:
    v = torch.tensor(values, dtype=torch.float32)
    return Batch(video=v.view(-1, 1, 1, 1, 1).expand(-1, 2, 3, 4, 4).clone(), audio=v.view(-1, 1).repeat(1, 8),
                 video_present=torch.ones(len(values), dtype=torch.bool))


class _Forward:
    """Records each pass; a member's logits are the rows' values (plus an offset per member)."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.sizes: list[int] = []
        self.members: list[tuple[str, ...]] = []
        self.delay, self.fail = delay, fail

    def __call__(self, batch: Batch, members) -> dict[str, MemberOutput]:
        self.sizes.append(batch.size)
        self.members.append(tuple(members))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("device lost")
        vals = batch.video[:, 0, 0, 0, 0].numpy()
        return {m: MemberOutput(vals + i, frame_scores=np.repeat(vals[:, None], 2, 1), features=vals[:, None])
                for i, m in enumerate(members)}


def test_concat_keeps_row_order_and_refuses_mixed_fields() -> None:
    b = concat([_batch([1, 2]), _batch([3])])
    assert b.size == 3 and b.video[:, 0, 0, 0, 0].tolist() == [1, 2, 3] and b.flow is None
    with pytest.raises(ValueError, match="audio"):
        concat([_batch([1]), Batch(video=torch.zeros(1, 2, 3, 4, 4), video_present=torch.ones(1, dtype=torch.bool))])


def test_concurrent_callers_share_passes_and_get_their_own_rows() -> None:
    fwd = _Forward(delay=0.02)
    batcher = WindowBatcher(fwd, max_windows=64, max_wait_s=0.2)
    results: dict[int, dict] = {}
    start = threading.Barrier(8)

    def caller(k: int) -> None:
        with batcher.scoring():
            start.wait()
            results[k] = batcher.run(_batch([k * 10 + j for j in range(3)]), ["a", "b"])

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(fwd.sizes) < 8 and sum(fwd.sizes) == 24  # fewer passes than callers, every window once
    for k, out in results.items():
        assert out["a"].logits.tolist() == [k * 10 + j for j in range(3)]
        assert out["b"].logits.tolist() == [k * 10 + j + 1 for j in range(3)]
        assert out["a"].frame_scores.shape == (3, 2) and out["a"].features[:, 0].tolist() == out["a"].logits.tolist()
    assert batcher.passes == len(fwd.sizes) and batcher.windows == 24


def test_a_lone_caller_does_not_wait_for_company() -> None:
    batcher = WindowBatcher(_Forward(), max_windows=64, max_wait_s=2.0)
    with batcher.scoring():
        t = time.perf_counter()
        batcher.run(_batch([1, 2]), ["a"])
        assert time.perf_counter() - t < 0.5


def test_different_member_sets_and_the_window_cap_split_passes() -> None:
    fwd = _Forward(delay=0.05)
    batcher = WindowBatcher(fwd, max_windows=4, max_wait_s=0.3)
    out: dict[str, dict] = {}
    go = threading.Barrier(3)

    def caller(name: str, members: list[str], rows: list[float]) -> None:
        with batcher.scoring():
            go.wait()
            out[name] = batcher.run(_batch(rows), members)

    threads = [threading.Thread(target=caller, args=a) for a in
               [("video", ["v"], [1, 2, 3]), ("all", ["v", "a"], [4, 5]), ("video2", ["v"], [6, 7])]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(n <= 4 for n in fwd.sizes) and sum(fwd.sizes) == 7
    assert all(len(set(m)) == len(m) for m in fwd.members)
    assert out["all"]["a"].logits.tolist() == [5, 6] and set(out["video"]) == {"v"}


def test_a_failed_pass_reaches_every_caller_in_it() -> None:
    batcher = WindowBatcher(_Forward(fail=True), max_windows=64, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="device lost"):
        batcher.run(_batch([1]), ["a"])


def test_after_close_callers_still_get_answers() -> None:
    batcher = WindowBatcher(_Forward(), max_windows=64, max_wait_s=0.0)
    batcher.close()
    assert batcher.run(_batch([7]), ["a"])["a"].logits.tolist() == [7]
    with pytest.raises(ValueError):
        WindowBatcher(_Forward(), max_windows=0)
