"""WindowStream: the dataset's windows and batches, cut while crops arrive; it never blocks extraction."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from veracity.config import ContractConfig
from veracity.data import window_sample
from veracity.stream import WindowStream

CONTRACT = ContractConfig(fps=12.5, face_size=16).build()
T = CONTRACT.frames_per_window
STRIDE = T // 2


def _rows(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), rng.normal(size=(8, 8, 2)).astype(np.float16),
             i / CONTRACT.fps) for i in range(n)]


def _audio(seconds: float = 20.0) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(1)
    return (rng.normal(size=int(seconds * CONTRACT.sample_rate)).astype(np.float32),
            rng.random(int(seconds / 0.01)) > 0.5, 0.01)


class Recorder:
    """A forward that keeps what it was given (the members' outputs are its batch's size)."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list = []
        self.delay, self.fail = delay, fail

    def __call__(self, batch):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("member exploded")
        self.batches.append(batch)
        return {"m": len(self.batches) - 1}


def test_the_stream_cuts_the_datasets_windows_in_whole_batches_per_track() -> None:
    fwd = Recorder()
    stream = WindowStream(CONTRACT, fwd, batch_size=2)
    wave, vad, hop = _audio()
    rows = {0: _rows(70, 0), 3: _rows(40, 1)}
    for i in range(70):  # two people, their crops interleaved as extraction writes them
        for track in (0, 3, -1):
            if track == -1 or i < len(rows[track]):
                face, flow, t = rows[track][i] if track >= 0 else rows[0][i]
                stream.crop(track, face, flow, t)
        if i == 5:
            stream.audio(wave, vad, hop)
    stream.finish()
    # Track 0 (70 rows): starts 0, 8, ..., 48 fit (6 windows, 3 batches); track 3 (40 rows):
    # 0, 8, 16, 24 (2 batches). The last window of each is the analyzer's, as are leftovers.
    assert [o["m"] for o in stream.outputs(0, ["m"])] and len(stream.outputs(0, ["m"])) == 3
    assert len(stream.outputs(3, ["m"])) == 2
    assert stream.outputs(-1, ["m"]) == []
    assert stream.outputs(0, ["m", "other"]) == []  # not every member ran: nothing to reuse
    assert len(fwd.batches) == 5
    for track, starts in ((0, [0, 8, 16, 24, 32, 40]), (3, [0, 8, 16, 24])):
        for k in range(0, len(starts), 2):
            want = []
            for s in starts[k : k + 2]:
                faces = np.stack([r[0] for r in rows[track][s : s + T]])
                flows = np.stack([r[1] for r in rows[track][s : s + T]])
                want.append(window_sample(faces, flows, CONTRACT, wave=wave, vad=vad, t0=rows[track][s][2],
                                          vad_hop_s=hop))
            assert any(all(torch.equal(getattr(b, key), torch.stack([w[key] for w in want]))
                           for key in ("video", "flow", "audio", "vad")) for b in fwd.batches), (track, k)


def test_a_track_keeps_only_the_crops_of_windows_not_yet_cut() -> None:
    stream = WindowStream(CONTRACT, Recorder(), batch_size=4)
    stream.audio(*_audio(60.0))
    for face, flow, t in _rows(600):
        stream.crop(0, face, flow, t)
        assert len(stream._tracks[0].faces) < T + STRIDE
    stream.finish()
    assert len(stream.outputs(0, ["m"])) == (600 - T) // STRIDE // 4


def test_without_audio_nothing_is_scored_and_nothing_waits() -> None:
    fwd = Recorder()
    stream = WindowStream(CONTRACT, fwd, batch_size=1, depth=1)
    stream.audio(None, None, None)
    for face, flow, t in _rows(200):
        stream.crop(0, face, flow, t)  # would block on the full queue if anything waited
    stream.finish()
    assert fwd.batches == [] and stream.outputs(0, ["m"]) == [] and not stream.usable


def test_a_failing_forward_stops_the_stream_without_blocking_extraction() -> None:
    stream = WindowStream(CONTRACT, Recorder(fail=True), batch_size=1, depth=1)
    stream.audio(*_audio())
    done = threading.Event()

    def extract() -> None:
        for face, flow, t in _rows(200):
            stream.crop(0, face, flow, t)
        done.set()

    threading.Thread(target=extract, daemon=True).start()
    assert done.wait(10)
    stream.finish()
    assert isinstance(stream.error, RuntimeError) and stream.outputs(0, ["m"]) == []


def test_close_frees_an_extraction_waiting_on_a_stream_that_waits_for_its_audio() -> None:
    stream = WindowStream(CONTRACT, Recorder(), batch_size=1, depth=2)
    done = threading.Event()

    def extract() -> None:
        for face, flow, t in _rows(80):  # windows queue up behind the audio, then extraction waits
            stream.crop(0, face, flow, t)
        done.set()

    threading.Thread(target=extract, daemon=True).start()
    assert not done.wait(0.5)  # back-pressure: a full queue holds extraction
    stream.close()
    assert done.wait(5) and not stream._thread.is_alive() and stream.outputs(0, ["m"]) == []


@pytest.mark.parametrize("n", [T - 1, T, T + STRIDE - 1])
def test_short_tracks_leave_every_window_to_the_analyzer_or_give_one(n: int) -> None:
    fwd = Recorder()
    stream = WindowStream(CONTRACT, fwd, batch_size=1)
    stream.audio(*_audio())
    for face, flow, t in _rows(n):
        stream.crop(0, face, flow, t)
    stream.finish()
    assert len(stream.outputs(0, ["m"])) == (0 if n < T else 1)
