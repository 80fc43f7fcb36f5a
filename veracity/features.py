"""On-disk feature records: what extraction writes and training streams from.

Layout of a features directory::

    contract.json                 the data contract the features were made for
    index.csv                     one row per clip: manifest columns + status and counts
    summary.json                  counts per status, face-found ratio, failure share
    parts/part-<i>-of-<n>.csv     index of one extraction shard (merged into index.csv)
    records/<xx>/<video_id>/      one record per clip, bucketed by a hash of the id
        meta.json                 status, message, media facts, tracks, fingerprint, and
                                  facts about arrays under "arrays" (arrays.vad.hop_s)
        times.npy                 (T,) float64   true timestamps of the sampled frames
        faces.npy                 (N, S, S, 3) uint8   face crops of every track
        crop_frame.npy            (N,) int32    sampled-frame index of each crop
        crop_track.npy            (N,) int16    track id; -1 marks a centre-crop fallback
        crop_box.npy              (N, 4) float32  crop box in display pixels
        crop_detected.npy         (N,) bool     a detector fired (False: tracked/coasted)
        flow.npy                  (N, S/2, S/2, 2) float16  Farneback flow from the previous
                                                crop of the same track (zeros for the first)
        audio.npy                 (M,) float32  16 kHz mono, loudness-normalised
        vad.npy                   (K,) bool     voice activity per hop of arrays.vad.hop_s
                                                seconds (see :meth:`ClipRecord.vad_hop_s`)

Arrays are written incrementally (:class:`NpyAppender`), so a ten-minute video costs no
more memory than a ten-second one, and read back memory-mapped. A record directory is
written under a temporary name and renamed when complete: a record that exists is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veracity.lineage import json_default

RECORDS = "records"
META = "meta.json"
ARRAYS = "arrays"  # meta.json key: per-array facts given to RecordWriter.save (e.g. vad's hop_s)
TMP_SUFFIX = ".partial"
_HEADER_LEN = 256  # bytes reserved for the .npy header so it can be rewritten in place


class RecordFormatError(ValueError):
    """A record that this version cannot read; the message says how to re-extract it."""


def record_dir(root: Path | str, video_id: str) -> Path:
    """Where the record of ``video_id`` lives under a features directory."""
    bucket = hashlib.sha1(video_id.encode()).hexdigest()[:2]
    return Path(root) / RECORDS / bucket / video_id


def map_rows_in_place(path: Path | str, fn: Callable[[np.ndarray], np.ndarray], block_rows: int) -> None:
    """Rewrite a ``.npy`` file's rows as ``fn`` of themselves, ``block_rows`` at a time.

    Plain reads and writes at the rows' offsets: the file's pages stay in the page cache.
    A writable memory map counts every page it touches as this process's memory, so
    normalising 10 minutes of audio that way added its 38 MB to the peak RSS.
    """
    with open(path, "r+b") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran:
            raise RecordFormatError(f"{Path(path).name}: Fortran-ordered arrays are not rewritten by rows")
        start, row = fh.tell(), dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        for r0 in range(0, shape[0] if shape else 0, block_rows):
            k = min(block_rows, shape[0] - r0)
            rows = np.frombuffer(os.pread(fh.fileno(), k * row, start + r0 * row), dtype).reshape(k, *shape[1:])
            os.pwrite(fh.fileno(), np.ascontiguousarray(fn(rows), dtype=dtype).tobytes(), start + r0 * row)


class NpyAppender:
    """Write a ``.npy`` file row by row without knowing the row count in advance.

    The header is written with room to spare and rewritten with the final shape on
    :meth:`close`; the result is an ordinary ``.npy`` file (``np.load`` with mmap works).
    """

    def __init__(self, path: Path | str, row_shape: tuple[int, ...], dtype: np.dtype | type):
        self.path = Path(path)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
             "shape": (rows, *self.row_shape)}
        text = repr(d).encode("latin1")
        magic = b"\x93NUMPY\x01\x00"
        pad = _HEADER_LEN - len(magic) - 2 - len(text) - 1
        if pad < 0:
            raise ValueError("npy header does not fit the reserved space")
        body = text + b" " * pad + b"\n"
        return magic + len(body).to_bytes(2, "little") + body

    def append(self, rows: np.ndarray) -> None:
        """Append one row (shape ``row_shape``) or a batch (``(n, *row_shape)``)."""
        arr = np.asarray(rows, dtype=self.dtype)
        if arr.shape == self.row_shape:
            arr = arr[None]
        if arr.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: row shape {arr.shape[1:]} != {self.row_shape}")
        self._fh.write(np.ascontiguousarray(arr).tobytes())
        self.rows += arr.shape[0]

    def close(self) -> None:
        """Finalise the header with the real row count."""
        if self._fh.closed:
            return
        self._fh.seek(0)
        self._fh.write(self._header(self.rows))
        self._fh.close()

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RecordWriter:
    """Builds one record in a temporary directory; :meth:`commit` makes it visible."""

    final: Path

    def __post_init__(self) -> None:
        self.tmp = self.final.with_name(self.final.name + TMP_SUFFIX)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)  # left by an interrupted run
        self.tmp.mkdir(parents=True)
        self._open: dict[str, NpyAppender] = {}
        self._attrs: dict[str, dict[str, Any]] = {}
        # Extraction writes the video arrays and the audio arrays from two threads.
        self._lock = threading.Lock()

    def appender(self, name: str, row_shape: tuple[int, ...], dtype: np.dtype | type) -> NpyAppender:
        """An appender for ``<name>.npy`` (created on first use, reused after)."""
        with self._lock:
            if name not in self._open:
                self._open[name] = NpyAppender(self.tmp / f"{name}.npy", row_shape, dtype)
            return self._open[name]

    def save(self, name: str, array: np.ndarray, **attrs: Any) -> None:
        """Write a whole small array as ``<name>.npy``.

        Args:
            name: the array's name.
            array: its values.
            **attrs: JSON-ready facts needed to read it (the VAD mask's ``hop_s``), stored
                in ``meta.json`` under ``arrays.<name>`` on :meth:`commit`.
        """
        np.save(self.tmp / f"{name}.npy", array)
        if attrs:
            with self._lock:
                self._attrs[name] = dict(attrs)

    def path(self, name: str) -> Path:
        """Path of ``<name>.npy`` inside the record being written."""
        return self.tmp / f"{name}.npy"

    def close_arrays(self) -> None:
        """Finalise every open appender (call before re-opening a file memory-mapped)."""
        for app in self._open.values():
            app.close()

    def commit(self, meta: dict[str, Any]) -> Path:
        """Write ``meta.json`` and atomically move the record into place."""
        self.close_arrays()
        if self._attrs:
            meta = {**meta, ARRAYS: {**meta.get(ARRAYS, {}), **self._attrs}}
        (self.tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True, default=json_default))
        if self.final.exists():
            shutil.rmtree(self.final)
        self.tmp.rename(self.final)
        return self.final

    def abort(self) -> None:
        """Drop the partial record."""
        for app in self._open.values():
            app.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_meta(record: Path | str) -> dict[str, Any] | None:
    """The meta of a complete record, or None if there is none."""
    path = Path(record) / META
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class ClipRecord:
    """Read access to one record; arrays are memory-mapped on first use, and the maps kept."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        meta = read_meta(self.path)
        if meta is None:
            raise FileNotFoundError(f"no complete feature record at {self.path}")
        self.meta = meta
        # A training epoch reads six arrays per window: mapping each file anew (open, parse
        # the header, mmap) took a quarter of the audio member's training time.
        self._maps: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        """A memory-mapped array of the record (empty array if the record has none)."""
        if name not in self._maps:
            path = self.path / f"{name}.npy"
            self._maps[name] = np.load(path, mmap_mode="r") if path.exists() else np.zeros((0,), dtype=np.float32)
        return self._maps[name]

    @property
    def status(self) -> str:
        return str(self.meta["status"])

    def vad_hop_s(self) -> float | None:
        """Seconds per element of ``vad.npy``, as extraction stored it; None without a mask.

        Raises:
            RecordFormatError: the record has a VAD mask but not its hop (written by a
                version of ``veracity extract`` that did not store it).
        """
        if not (self.path / "vad.npy").exists():
            return None
        hop = self.meta.get(ARRAYS, {}).get("vad", {}).get("hop_s")
        if hop is None:
            features = self.path.parents[2] if len(self.path.parents) > 2 else self.path
            raise RecordFormatError(
                f"feature record {self.path} has a VAD mask but not its hop (meta.json "
                f"{ARRAYS}.vad.hop_s): it was written by an older `veracity extract`. Re-run "
                f"extraction into a fresh directory (delete {features} first: records whose "
                "fingerprint matches are reused as they are), e.g. `dvc repro extract`."
            )
        return float(hop)

    def primary_track(self) -> int | None:
        """The kept track with the most crops (the main speaker), if any."""
        kept = [t for t in self.meta.get("tracks", []) if t.get("kept")]
        if not kept:
            return None
        return int(max(kept, key=lambda t: (t["n_frames"], -t["track_id"]))["track_id"])

    def track_crops(self, track: int | None = None) -> np.ndarray:
        """Row indices (into ``faces``) of one track, in time order; primary track by default.

        With no kept track, the centre-crop fallback rows (track -1) are returned.
        """
        tracks = self.array("crop_track")
        tid = self.primary_track() if track is None else track
        return np.flatnonzero(tracks == (-1 if tid is None else tid))
