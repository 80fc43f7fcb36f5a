"""The ``extract`` stage: manifest -> per-clip feature records, with nothing lost.

For each clip: probe, stream-decode frames at the contract's fps (true timestamps),
detect faces (every ``detect_every`` sampled frames: in frames larger than
``detect_max_side`` the whole frame every ``scan_every``, near the tracked faces
between) and track them so each person keeps one track, crop squares with a margin,
compute optical flow along each track, decode the audio at 16 kHz mono, find voice
activity and normalise loudness. Every clip ends with a status (:mod:`veracity.status`)
and a message; a bad file never stops the others. Bad media gets the status that says
what is wrong with it; an unexpected exception (a bug of ours, not bad data) gets
``error``, its traceback goes to the log, and the stage fails (:func:`check_failures`)
however few clips it hit.

Runs are resumable (a finished record whose fingerprint matches is reused) and shardable
(``shard=(i, n)`` takes the clips whose id hashes to ``i`` mod ``n``; :func:`merge`
joins the shard indexes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np
import pandas as pd

from veracity.config import ExtractConfig, to_plain, write_resolved
from veracity.contract import DataContract
from veracity.corpus import manifest as mf
from veracity.features import (
    RECORDS,
    TMP_SUFFIX,
    RecordWriter,
    map_rows_in_place,
    read_meta,
    record_dir,
)
from veracity.media import audio as maudio
from veracity.media.decode import FrameReader, MediaError, even_crop_box, iter_audio
from veracity.media.faces import FaceDetector, FaceTracker, HaarFaceDetector, center_box, square_box
from veracity.media.flow import FlowStream
from veracity.status import CODE_FAILURE_STATUSES, EXTRACT_STATUSES, OK

INDEX = "index.csv"
SUMMARY = "summary.json"
PARTS = "parts"
# How many clips with status "error" the summary names (the count is always complete).
ERROR_CLIPS_NAMED = 20
_SILENT_DBFS = -60.0
log = logging.getLogger(__name__)
T = TypeVar("T")


class ExtractError(RuntimeError):
    """The stage as a whole failed (bad shard spec, too many unusable clips, missing parts)."""


@dataclass(frozen=True)
class ExtractResult:
    """What a run (or a merge) produced."""

    index: pd.DataFrame
    summary: dict[str, Any]
    reused: int
    processed: int


# The layout of a record; bump it when what a record holds changes (2: the VAD mask carries
# its hop), so a resumed run re-extracts records written by an older version.
RECORD_FORMAT = 2


def fingerprint(cfg: ExtractConfig, contract: DataContract) -> str:
    """Hash of everything that changes a record's content (not worker counts)."""
    plain = {"extract": to_plain(cfg, exclude=cfg.EXECUTION_ONLY), "contract": contract.to_dict(),
             "record_format": RECORD_FORMAT}
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def shard_of(video_id: str, n: int) -> int:
    """Stable shard number of a clip (crc32 of its id, mod n)."""
    return zlib.crc32(video_id.encode()) % n


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; ``None`` -> ``(0, 1)``."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ExtractError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ExtractError(f"--shard {text}: need 0 <= i < n")
    return i, n


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Iterate ``items`` on a background thread, at most ``depth`` ahead.

    FFmpeg decodes and OpenCV detects with the GIL released, so decoding the next frames
    overlaps the analysis of this one; the bounded queue keeps memory flat.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()
    error: list[BaseException] = []

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            error.append(exc)
        finally:
            q.put(done)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
    if error:
        raise error[0]


class ExtractObserver(Protocol):
    """Told about a clip's data while :func:`extract_clip` writes it (the analyzer scores
    windows before the file is finished: :mod:`veracity.stream`). Must not raise."""

    def crop(self, track: int, face: np.ndarray, flow: np.ndarray | None, time: float) -> None:
        """One crop row as written: its track (-1: centre fallback), (S, S, 3) uint8 crop,
        float16 flow (or None without flow) and the frame's time; from the video thread."""

    def audio(self, wave: np.ndarray | None, vad: np.ndarray | None, hop_s: float | None) -> None:
        """Once, from the audio thread: the normalised waveform (read-only memory map) and
        the voice-activity mask, or Nones when the file has no usable audio."""


_local = threading.local()


def _detector(max_side: int, min_face_frac: float, role: str = "scan") -> HaarFaceDetector:
    # One cascade per thread, setting and role: loading it costs more than a detection, and
    # OpenCV's CascadeClassifier is not safe to share between threads (concurrent analyses
    # in one server process got each other's detections; so did one clip's whole-frame
    # scans and its near searches, which run at once on two threads: hence the role).
    cache = _local.__dict__.setdefault("detectors", {})
    key = (max_side, min_face_frac, role)
    if key not in cache:
        cache[key] = HaarFaceDetector(max_side=max_side, min_face_frac=min_face_frac)
    return cache[key]


# ----------------------------------------------------------------------------- one clip


def _scans(frames: Iterable[Any], detector: FaceDetector, cfg: ExtractConfig) -> Iterator[tuple[Any, list | None]]:
    """Each frame with its whole-frame detections, or None: every ``scan_every``-th sampled
    frame, or every ``detect_every``-th for frames no larger than ``detect_max_side``."""
    for frame in frames:
        every = cfg.detect_every if max(frame.width, frame.height) <= cfg.detect_max_side else cfg.scan_every
        # The luma plane as decoded (no conversion): Haar does not need full range.
        yield frame, (detector.detect(frame.y_plane()) if frame.index % every == 0 else None)


def _video_part(reader: FrameReader, w: RecordWriter, cfg: ExtractConfig,
                contract: DataContract, detector: FaceDetector | None = None,
                observer: ExtractObserver | None = None) -> dict[str, Any]:
    """Frames -> face tracks, crops, flow and timestamps written into ``w``; returns the facts.

    ``reader`` is iterated once; each item needs ``index``, ``time``, ``width``, ``height``,
    ``y_plane()`` and ``crop_resized(x0, y0, x1, y1, size)`` (a :class:`~veracity.media.decode.SampledFrame`),
    and the reader ``decoded`` and ``errors`` afterwards. ``detector`` replaces the Haar
    cascade of ``cfg`` (:mod:`veracity.frames` scores still images through here); it must
    be safe to call from two threads at once when ``scan_every`` > ``detect_every``.
    """
    if detector is None:
        detector = _detector(cfg.detect_max_side, cfg.min_face_frac)
        finder = _detector(cfg.detect_max_side, cfg.min_face_frac, "near")
    else:
        finder = detector
    tracker = FaceTracker(iou_threshold=cfg.iou_threshold, max_missed=cfg.max_missed)
    size = contract.face_size
    fsize = max(8, size // 2)
    faces = w.appender("faces", (size, size, 3), np.uint8)
    flows = w.appender("flow", (fsize, fsize, 2), np.float16) if cfg.flow else None
    c_frame = w.appender("crop_frame", (), np.int32)
    c_track = w.appender("crop_track", (), np.int16)
    c_box = w.appender("crop_box", (4,), np.float32)
    c_det = w.appender("crop_detected", (), np.bool_)
    times = w.appender("times", (), np.float64)
    streams: dict[int, FlowStream] = {}
    with_face = detected_frames = fallbacks = 0
    n = 0
    # Three stages, each on its own thread with a bounded queue between: decoding, the
    # whole-frame scans (a pure function of the frame, so they run ahead of the tracker)
    # and, here, tracking, crops and flow (which feed back into the tracker, so they stay
    # in order). The detections between scans look near the tracked faces, so they need
    # the tracker's state and run here too; with no face tracked they scan the whole frame.
    for frame, dets in prefetch(_scans(prefetch(reader), detector, cfg)):
        n += 1
        times.append(np.float64(frame.time))
        if dets is None and frame.index % cfg.detect_every == 0:
            near = tracker.boxes()
            # `finder`, not `detector`: the scan thread may be using that one's cascade now.
            dets = finder.detect_near(frame.y_plane(), near) if near else finder.detect(frame.y_plane())
        if dets is not None:
            detected_frames += bool(dets)
            tracked = tracker.update(dets)
        else:
            tracked = tracker.update(None)
        rows = [(t.track_id, t.box, t.detected) for t in tracked]
        if rows:
            with_face += 1
        else:
            fallbacks += 1
            rows = [(-1, center_box(frame.width, frame.height), False)]
        for track_id, box, det in rows:
            square = square_box(box, contract.face_margin, frame.width, frame.height) if track_id >= 0 else box
            x0, y0, x1, y1 = even_crop_box(square, size)
            crop = frame.crop_resized(x0, y0, x1, y1, size)
            faces.append(crop)
            c_frame.append(np.int32(frame.index))
            c_track.append(np.int16(track_id))
            c_box.append(np.array([x0, y0, x1, y1], np.float32))
            c_det.append(np.bool_(det))
            row_flow = None
            if flows is not None:
                small = cv2.resize(crop, (fsize, fsize), interpolation=cv2.INTER_AREA)
                flow = streams.setdefault(track_id, FlowStream()).push(small)
                row_flow = np.zeros((fsize, fsize, 2), np.float16) if flow is None else flow
                flows.append(row_flow)
                if flow is not None and not det and track_id >= 0:
                    # Between detections, follow the face by its own motion inside the crop.
                    c = fsize // 4
                    dx, dy = np.median(flow[c:-c, c:-c].reshape(-1, 2).astype(np.float32), axis=0)
                    scale = (x1 - x0) / fsize
                    tracker.shift(track_id, float(dx) * scale, float(dy) * scale)
            if observer is not None:
                observer.crop(track_id, crop, row_flow, frame.time)
    tracks = tracker.summary()
    min_len = max(1, int(np.ceil(cfg.min_track_frac * max(n, 1))))
    for t in tracks:
        t["kept"] = bool(t["n_frames"] >= min_len)
    return {
        "n_frames": n,
        "decoded_frames": reader.decoded,
        "decode_errors": list(reader.errors),
        "face_ratio": with_face / n if n else 0.0,
        "detect_ratio": detected_frames / max(1, -(-n // cfg.detect_every)) if n else 0.0,
        "fallback_ratio": fallbacks / n if n else 0.0,
        "n_crops": faces.rows,
        "tracks": tracks,
        "n_tracks": sum(t["kept"] for t in tracks),
    }


def _audio_part(path: Path, w: RecordWriter, cfg: ExtractConfig, contract: DataContract,
                observer: ExtractObserver | None = None) -> dict[str, Any]:
    """Audio -> 16 kHz waveform (loudness-normalised) and voice activity written into ``w``.

    Runs on its own thread beside :func:`_video_part` (see :func:`extract_clip`): it only
    touches its own arrays of the record.
    """
    vad = maudio.EnergyVAD(sample_rate=contract.sample_rate, margin_db=cfg.vad_margin_db)
    out = w.appender("audio", (), np.float32)
    sq = 0.0
    peak = 0.0
    for chunk in iter_audio(path, contract.sample_rate):
        out.append(chunk)
        vad.feed(chunk)
        sq += float(np.dot(chunk.astype(np.float64), chunk))
        peak = max(peak, float(np.abs(chunk).max(initial=0.0)))
    out.close()
    n = out.rows
    rms_db = 10 * np.log10(sq / n + 1e-20) if n else -200.0
    gain = maudio.loudness_gain_db(rms_db, cfg.loudness_target_dbfs, peak=peak) if rms_db > _SILENT_DBFS else 0.0
    if n and gain != 0.0:
        # Normalise in place, 30 s at a time: the waveform is never all in memory.
        map_rows_in_place(w.path("audio"), lambda block: maudio.apply_gain(block, gain), contract.sample_rate * 30)
    result = vad.finish()
    mask = result.mask.astype(bool)
    w.save("vad", mask, hop_s=result.hop_s)
    if observer is not None:
        observer.audio(np.load(w.path("audio"), mmap_mode="r") if n else None, mask, result.hop_s)
    return {
        "has_audio": True,
        "audio_s": n / contract.sample_rate,
        "rms_dbfs": float(rms_db),
        "gain_db": float(gain),
        "speech_ratio": float(result.speech_ratio),
        "speech_segments": len(result.segments),
    }


def _heard(path: Path, w: RecordWriter, cfg: ExtractConfig, contract: DataContract,
           observer: ExtractObserver | None) -> dict[str, Any]:
    """:func:`_audio_part`, telling ``observer`` when it fails (it must not wait on)."""
    try:
        return _audio_part(path, w, cfg, contract, observer)
    except BaseException:
        if observer is not None:
            observer.audio(None, None, None)
        raise


def extract_clip(row: dict[str, Any], root: Path, out: Path, cfg: ExtractConfig,
                 contract: DataContract, fp: str, observer: ExtractObserver | None = None) -> dict[str, Any]:
    """Extract one clip into its record; returns its index row (never raises on bad media).

    Args:
        row: the manifest row (``video_id``, ``path``, labels...).
        root: directory relative manifest paths are taken from.
        out: the features directory.
        cfg: extraction settings.
        contract: the data contract (fps, face size, sample rate).
        fp: the run's :func:`fingerprint`; a record with the same one is reused.
        observer: told about every crop and the audio as they are written (not for a
            reused record); it is told about the audio exactly once whatever happens,
            unless extraction fails before the audio starts.
    """
    vid = str(row["video_id"])
    final = record_dir(out, vid)
    meta = read_meta(final)
    # A record that ended in a failure of our code is retried: the fix does not change the
    # fingerprint, and the record may be half-written.
    if meta is not None and meta.get("fingerprint") == fp and meta.get("status") not in CODE_FAILURE_STATUSES:
        return {**meta["index"], "reused": True}

    start = time.perf_counter()
    path = Path(str(row["path"]))
    path = path if path.is_absolute() else root / path
    base = {k: row.get(k) for k in mf.REQUIRED_COLUMNS if k != "path"}
    base["path"] = str(row["path"])
    facts: dict[str, Any] = {"has_audio": False, "n_frames": 0, "n_crops": 0, "n_tracks": 0, "face_ratio": 0.0}
    problems: dict[str, str] = {}
    w = RecordWriter(final)
    reader: FrameReader | None = None
    try:
        # The reader probes the file once and decodes on from there (one open per clip).
        reader = FrameReader(path, contract.fps)
        info = reader.info
        facts.update(duration_s=info.duration_s, width=info.width, height=info.height,
                     src_fps=info.avg_fps, rotation=info.rotation, audio_rate=info.audio_rate,
                     audio_channels=info.audio_channels)
        if min(info.width, info.height) < cfg.min_side:
            problems["too_small"] = f"frame {info.width}x{info.height} is below the {cfg.min_side} px minimum side"
        elif info.duration_s is not None and info.duration_s > cfg.max_duration_s:
            problems["too_long"] = f"duration {info.duration_s:.0f} s exceeds extract.max_duration_s={cfg.max_duration_s:.0f}"
        else:
            # The audio is decoded on a second thread while the frames are: FFmpeg and the
            # VAD's numpy release the GIL, and the two parts write separate arrays. Leaving the
            # block joins it, so no writer runs on under a record being committed.
            with ThreadPoolExecutor(1, thread_name_prefix="extract-audio") as beside:
                audio = beside.submit(_heard, path, w, cfg, contract, observer) if info.has_audio else None
                if audio is None and observer is not None:
                    observer.audio(None, None, None)
                facts.update(_video_part(reader, w, cfg, contract, observer=observer))
                dur = facts["n_frames"] / contract.fps
                if facts["n_frames"] == 0:
                    problems["corrupt"] = "no decodable video frame" + (
                        f" ({facts['decode_errors'][0]})" if facts["decode_errors"] else "")
                elif dur < cfg.min_duration_s:
                    problems["too_short"] = (f"{facts['n_frames']} frames ({dur:.2f} s) is below "
                                             f"extract.min_duration_s={cfg.min_duration_s}")
                elif facts["face_ratio"] < cfg.min_face_ratio:
                    problems["no_face"] = (f"a face was found in {facts['face_ratio']:.0%} of sampled frames "
                                           f"(< {cfg.min_face_ratio:.0%}); centre crops stored and flagged")
                if audio is not None:
                    facts.update(audio.result())
                    if facts["rms_dbfs"] <= _SILENT_DBFS or facts["speech_ratio"] == 0.0:
                        problems["silent"] = f"audio is silent (RMS {facts['rms_dbfs']:.1f} dBFS, no voice activity)"
                else:
                    problems["no_audio"] = "the file has no audio stream"
            if facts.get("decode_errors"):
                facts["warning"] = f"decoding stopped early: {facts['decode_errors'][0]}"
    except MediaError as exc:
        problems[exc.status] = exc.message
    except Exception as exc:  # noqa: BLE001 - one clip's failure must never stop the batch
        # Not bad media (that is a MediaError): a bug to fix, so it gets its own status and
        # its traceback, instead of passing for a corrupt file within the failure allowance.
        log.warning("%s: unexpected %s while extracting %s", vid, type(exc).__name__, path, exc_info=True)
        problems["error"] = f"unexpected {type(exc).__name__} while extracting: {exc}"
    finally:
        if reader is not None:
            reader.close()
    status = next((s for s in EXTRACT_STATUSES if s in problems), OK)
    message = problems.get(status, "extracted")
    others = sorted(set(problems) - {status})
    index_row = {
        **base, "status": status, "message": message, "other_problems": ";".join(others),
        "record": final.relative_to(out).as_posix(),
        **{k: v for k, v in facts.items() if k not in ("tracks", "decode_errors")},
        "decode_errors": len(facts.get("decode_errors", [])),
    }
    # Timings go to the log, not the record: identical inputs give identical bytes (dvc.lock).
    log.debug("%s: %s in %.2f s", vid, status, time.perf_counter() - start)
    meta = {"fingerprint": fp, "status": status, "message": message, "problems": problems,
            "tracks": facts.get("tracks", []), "index": index_row}
    w.commit(meta)
    return {**index_row, "reused": False}


def _extract_job(args: tuple) -> dict[str, Any]:
    return extract_clip(*args)


def share_cores(workers: int) -> None:
    """Initializer of a pool of ``workers`` extraction processes: each decodes with its share
    of the cores (else FFmpeg starts a thread per core in each and they fight).

    Only FFmpeg's: these pools fork, and a forked child that resizes OpenCV's thread pool
    (``cv2.setNumThreads``) after its parent has used it waits forever for threads that did
    not survive the fork (the attack stage hung so).
    """
    from veracity.cores import thread_share
    from veracity.media.decode import set_decode_threads

    set_decode_threads(thread_share(workers) > 1)


# ----------------------------------------------------------------------------- the stage


def _clean_partials(out: Path) -> int:
    n = 0
    for tmp in (out / RECORDS).glob(f"*/*{TMP_SUFFIX}"):
        shutil.rmtree(tmp, ignore_errors=True)
        n += 1
    return n


def extract(
    cfg: ExtractConfig,
    contract: DataContract,
    manifest_path: Path,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[[int, int], None] | None = None,
) -> ExtractResult:
    """Extract the clips of one shard and write its index part (the stage: :mod:`veracity.stages.extract`).

    With ``shard=(0, 1)`` (the default) the part is merged straight away into
    ``index.csv`` and ``summary.json``; otherwise run :func:`merge` once every shard is done.

    Raises:
        ExtractError: the manifest is unreadable, or a merge fails (see :func:`merge`). The
            failure bound (:func:`check_failures`) is the stage's: :func:`veracity.stages.extract.extract`.
    """
    out = Path(out)
    try:
        df = mf.read(manifest_path)
    except mf.ManifestError as exc:
        raise ExtractError(str(exc)) from None
    i, n = shard
    rows = [r for r in df.to_dict("records") if shard_of(str(r["video_id"]), n) == i]
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    _clean_partials(out)
    contract.save(out)
    write_resolved(cfg, out, exclude=cfg.EXECUTION_ONLY)
    fp = fingerprint(cfg, contract)
    root = Path(manifest_path).parent
    jobs = [(r, root, out, cfg, contract, fp) for r in rows]
    results: list[dict[str, Any]] = []
    if cfg.workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=cfg.workers, initializer=share_cores, initargs=(cfg.workers,)) as pool:
            for res in pool.map(_extract_job, jobs, chunksize=1):
                results.append(res)
                if progress:
                    progress(len(results), len(jobs))
    else:
        for job in jobs:
            results.append(_extract_job(job))
            if progress:
                progress(len(results), len(jobs))
    part = pd.DataFrame(results)
    reused = int(part["reused"].sum()) if len(part) else 0
    part = part.drop(columns=["reused"], errors="ignore")
    (out / PARTS).mkdir(exist_ok=True)
    part_path = out / PARTS / f"part-{i}-of-{n}.csv"
    part.sort_values("video_id").to_csv(part_path, index=False) if len(part) else part_path.write_text("video_id\n")
    if n == 1:
        merged = merge(cfg, out, manifest_path, n=1)
        return ExtractResult(merged.index, merged.summary, reused, len(results) - reused)
    return ExtractResult(part, {}, reused, len(results) - reused)


def summarize(index: pd.DataFrame, cfg: ExtractConfig) -> dict[str, Any]:
    """Counts per status, usable share, face-found ratio over usable clips, and the clips
    our code failed on (``errors``, and the first :data:`ERROR_CLIPS_NAMED` of them by id)."""
    counts = index["status"].value_counts().to_dict() if len(index) else {}
    failed = sorted(index.loc[index["status"].isin(CODE_FAILURE_STATUSES), "video_id"].astype(str)) if len(index) else []
    usable = index["status"].isin(cfg.usable_statuses) if len(index) else pd.Series(dtype=bool)
    frames = index.loc[usable, "n_frames"].sum() if len(index) else 0
    face_frames = (index.loc[usable, "face_ratio"] * index.loc[usable, "n_frames"]).sum() if len(index) else 0
    return {
        "clips": int(len(index)),
        "usable": int(usable.sum()),
        "failure_ratio": float(1 - usable.mean()) if len(index) else 0.0,
        "max_failure_ratio": cfg.max_failure_ratio,
        "face_found_ratio": float(face_frames / frames) if frames else 0.0,
        "frames": int(frames),
        "status": {str(k): int(v) for k, v in sorted(counts.items())},
        "errors": len(failed),
        "error_clips": failed[:ERROR_CLIPS_NAMED],
    }


def merge(cfg: ExtractConfig, out: Path, manifest_path: Path | None = None, n: int | None = None) -> ExtractResult:
    """Join shard index parts into ``index.csv`` + ``summary.json`` (the failure bound is
    applied by the stage, :func:`veracity.stages.extract.merge`).

    Args:
        cfg: extraction settings (usable statuses, failure bound).
        out: the features directory.
        manifest_path: when given, every manifest clip must appear exactly once.
        n: expected shard count; by default taken from the part names.

    Raises:
        ExtractError: parts missing or inconsistent.
    """
    out = Path(out)
    parts = sorted((out / PARTS).glob("part-*-of-*.csv"))
    counts = {int(p.stem.split("-of-")[1]) for p in parts}
    if n is None:
        if len(counts) != 1:
            raise ExtractError(f"cannot merge: parts from different shard counts {sorted(counts)} in {out / PARTS}")
        n = counts.pop()
    wanted = [out / PARTS / f"part-{i}-of-{n}.csv" for i in range(n)]
    missing = [p.name for p in wanted if not p.exists()]
    if missing:
        raise ExtractError(f"cannot merge: missing shard parts {missing}")
    frames = [pd.read_csv(p) for p in wanted]
    index = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else frames[0]
    dup = index["video_id"][index["video_id"].duplicated()].tolist()
    if dup:
        raise ExtractError(f"cannot merge: clips extracted by two shards: {dup[:5]}")
    if manifest_path is not None:
        want = set(mf.read(manifest_path)["video_id"])
        lost = sorted(want - set(index["video_id"]))
        if lost:
            raise ExtractError(f"cannot merge: {len(lost)} manifest clips have no record, e.g. {lost[:5]}")
    index = index.sort_values("video_id").reset_index(drop=True)
    index.to_csv(out / INDEX, index=False)
    summary = summarize(index, cfg)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return ExtractResult(index, summary, 0, 0)


def check_failures(summary: dict[str, Any], cfg: ExtractConfig) -> None:
    """Raise when our code failed on any clip, or when the share of unusable clips passes
    ``extract.max_failure_ratio``.

    Raises:
        ExtractError: a clip has status ``error`` (a code failure is never within the
            allowance for bad media; the message names the clips), or too many clips are unusable.
    """
    if summary["errors"]:
        more = summary["errors"] - len(summary["error_clips"])
        raise ExtractError(
            f"extraction failed on {summary['errors']} of {summary['clips']} clips with an unexpected exception "
            f"(status 'error': a bug, not bad media; tracebacks in the log): {', '.join(summary['error_clips'])}"
            + (f" and {more} more" if more > 0 else "")
        )
    if summary["failure_ratio"] > cfg.max_failure_ratio:
        raise ExtractError(
            f"{summary['clips'] - summary['usable']} of {summary['clips']} clips are unusable "
            f"({summary['failure_ratio']:.1%} > extract.max_failure_ratio={cfg.max_failure_ratio:.1%}); "
            f"statuses: {summary['status']}"
        )
