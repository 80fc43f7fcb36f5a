"""Windows scored while their file is still being extracted: the analyzer's overlap.

:class:`WindowStream` is the :class:`~veracity.extract.ExtractObserver` the analyzer hands
to extraction. As crops are written, each face track's evaluation windows (the starts a
:class:`~veracity.data.WindowDataset` would plan: ``0, stride, 2*stride...``) are cut as
soon as their last crop exists and go, through a bounded queue, to a scoring thread that
runs the members on them in batches of ``batch_size`` while decoding, detection and flow
go on. So a long video's analysis takes about as long as its extraction, not extraction
plus inference, and memory stays flat (a track keeps only the crops of windows not yet cut;
a full queue makes extraction wait).

What is scored here is what the analyzer would have scored afterwards, bit for bit:

* windows are cut by :func:`veracity.data.window_sample`, the dataset's own code, from the
  same crops, flow, waveform and voice activity the record gets;
* batches are the same: a track's windows in order, cut into runs of ``batch_size`` from
  its first window (a batch is formed when all its windows exist; the rest, the clip's
  last window among them, are left to the analyzer, which cuts them the same way).

The stream speculates that the file will be judged by every member with its audio (the
common case): windows wait for the audio part to finish (its loudness normalisation needs
the whole waveform). When the file turns out otherwise (no audio, silent, a member judged
alone), the analyzer drops what was scored here and starts over; see
:meth:`veracity.analyzer.Analyzer` ``_score_person``.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from veracity.contract import DataContract
from veracity.data import collate, window_sample

log = logging.getLogger(__name__)

_END = object()


class _Track:
    """One face track's crops not yet needed by a cut window, and its next window's start."""

    __slots__ = ("faces", "first", "flows", "next_start", "rows", "times")

    def __init__(self) -> None:
        self.faces: list[np.ndarray] = []
        self.flows: list[np.ndarray | None] = []
        self.times: list[float] = []
        self.first = 0  # track row of faces[0]
        self.rows = 0  # crops of this track so far
        self.next_start = 0


class WindowStream:
    """Cut windows from crops as extraction writes them and score them on a thread.

    Args:
        contract: window length, fps and sample rate (the bundle's).
        forward: runs the members on one :class:`~veracity.models.base.Batch` and returns
            their outputs (the analyzer's forward: its lock or shared batcher).
        batch_size: windows per forward pass (the analyzer's).
        depth: windows cut but not yet scored before extraction waits.
    """

    def __init__(self, contract: DataContract, forward: Callable[[Any], dict[str, Any]], batch_size: int,
                 depth: int | None = None):
        self.contract = contract
        self.forward = forward
        self.batch_size = batch_size
        self.stride = max(1, contract.frames_per_window // 2)  # WindowDataset's evaluation stride
        self._tracks: dict[int, _Track] = {}
        self._queue: queue.Queue = queue.Queue(maxsize=depth or 2 * batch_size)
        self._heard = threading.Event()
        self._off = threading.Event()
        self._audio: tuple[np.ndarray, np.ndarray | None, float] | None = None
        self._outputs: dict[int, list[dict[str, Any]]] = {}
        self.forward_s = 0.0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._score, name="stream-score", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ extraction's side

    def crop(self, track: int, face: np.ndarray, flow: np.ndarray | None, time: float) -> None:
        """Take one crop row; cut every window of its track that it completes."""
        if track < 0 or self._off.is_set():
            return  # the centre-crop fallback is no person: the analyzer never scores it
        tr = self._tracks.setdefault(track, _Track())
        tr.faces.append(face)
        tr.flows.append(flow)
        tr.times.append(time)
        tr.rows += 1
        t = self.contract.frames_per_window
        while tr.next_start + t <= tr.rows:
            a = tr.next_start - tr.first
            flows = tr.flows[a : a + t]
            window = (track, np.stack(tr.faces[a : a + t]),
                      None if any(f is None for f in flows) else np.stack(flows), tr.times[a])
            tr.next_start += self.stride
            drop = tr.next_start - tr.first  # rows before the next window's start are done
            del tr.faces[:drop], tr.flows[:drop], tr.times[:drop]
            tr.first = tr.next_start
            if not self._put(window):
                return

    def audio(self, wave: np.ndarray | None, vad: np.ndarray | None, hop_s: float | None) -> None:
        """Take the finished waveform and voice activity; None: nothing will be scored here."""
        if wave is None or hop_s is None:
            self._off.set()
        else:
            self._audio = (wave, vad, float(hop_s))
        self._heard.set()

    def _put(self, item: Any) -> bool:
        while not self._off.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------ the scoring thread

    def _score(self) -> None:
        pending: dict[int, list[dict[str, Any]]] = {}
        try:
            while True:
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if self._off.is_set():
                        return
                    continue
                if item is _END:
                    return
                # The audio is normalised over the whole file: no window before it is done
                # (audio() and close() both set the event).
                self._heard.wait()
                if self._off.is_set() or self._audio is None:
                    return
                track, faces, flows, t0 = item
                wave, vad, hop = self._audio
                sample = window_sample(faces, flows, self.contract, wave=wave, vad=vad, t0=t0, vad_hop_s=hop)
                done = pending.setdefault(track, [])
                sample.update(video_present=True, audio_present=True, label=0.0, video_label=math.nan,
                              audio_label=math.nan, index=len(done))
                done.append(sample)
                if len(done) == self.batch_size:
                    batch = collate(done)[0]
                    pending[track] = []
                    t = time.perf_counter()
                    out = self.forward(batch)
                    self.forward_s += time.perf_counter() - t
                    self._outputs.setdefault(track, []).append(out)
        except BaseException as exc:  # noqa: BLE001 - the analyzer scores the windows itself
            log.debug("window stream stopped: %s", exc, exc_info=True)
            self.error = exc
            self._off.set()

    # ------------------------------------------------------------ the analyzer's side

    def finish(self) -> None:
        """Wait until every window cut so far is scored (call once extraction returned)."""
        self._put(_END)  # not when stopped: the thread then ends by itself
        self._thread.join()

    def close(self) -> None:
        """Stop now, dropping what is queued (every exit path of an analysis)."""
        self._off.set()
        self._heard.set()  # a thread waiting for the audio stops waiting
        self._thread.join()

    @property
    def usable(self) -> bool:
        """Whether the outputs hold for a file judged by every member with its audio."""
        return self._audio is not None and self.error is None and not self._off.is_set()

    def outputs(self, track: int, members: Sequence[str]) -> list[dict[str, Any]]:
        """The members' outputs of ``track``'s first whole batches, in order ([] if unusable)."""
        if not self.usable:
            return []
        got = self._outputs.get(track, [])
        return got if all(set(members) <= set(o) for o in got) else []
