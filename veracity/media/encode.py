"""Write MP4 files (H.264 video + AAC audio) with PyAV, byte-for-byte reproducibly."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import cv2
import numpy as np


def write_mp4(
    path: Path | str,
    frames: Iterable[np.ndarray],
    fps: int,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 23,
    audio_bitrate: int = 48000,
    preset: str = "medium",
) -> Path:
    """Encode RGB uint8 frames (H, W, 3) and optional mono float32 audio to an MP4.

    One encoder thread is used on purpose: libx264's output is then a pure function of
    its input, so a corpus generated twice, by any number of workers, has identical bytes
    (data.dvc relies on it).

    Args:
        path: output file; its parent is created.
        frames: RGB frames of one fixed, even-sized shape.
        fps: constant frame rate.
        audio: mono samples in [-1, 1], or None for a video-only file.
        sample_rate: audio rate in Hz.
        crf: x264 constant rate factor (lower = higher quality).
        audio_bitrate: AAC bit rate in bit/s.
        preset: x264 speed/quality preset.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    samples = None
    if audio is not None:
        samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    with av.open(str(tmp), "w", format="mp4") as container:
        vstream = None
        astream = None
        sent = 0  # audio samples handed to the encoder so far
        for i, frame in enumerate(frames):
            if vstream is None:
                h, w = frame.shape[:2]
                vstream = container.add_stream("libx264", rate=fps)
                vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
                vstream.thread_count = 1
                # mbtree off: with it, x264 (as bundled in PyAV 18) gave different bytes for
                # the same small frames from run to run (measured on 64-96 px clips).
                # cpu-independent: x264's assembly otherwise makes decisions that depend on
                # the CPU (asm up to SSE2 gave other bytes than SSE4.2/AVX2 for the same frames).
                vstream.options = {"crf": str(crf), "preset": preset, "threads": "1",
                                   "x264-params": "mbtree=0:cpu-independent=1"}
                if samples is not None:
                    astream = container.add_stream("aac", rate=sample_rate)
                    astream.layout = "mono"
                    astream.bit_rate = audio_bitrate
            vf = _yuv420_frame(frame)
            vf.pts = i
            container.mux(vstream.encode(vf))
            if astream is not None and samples is not None:
                # Interleave audio up to this frame's end time, so the muxer never queues a
                # whole clip of video packets waiting for audio (memory stays flat).
                upto = min(len(samples), round((i + 1) * sample_rate / fps))
                sent = _send_audio(container, astream, samples, sent, upto, sample_rate)
        if vstream is None:
            raise ValueError(f"{path}: no frames to encode")
        container.mux(vstream.encode(None))
        if astream is not None and samples is not None:
            _send_audio(container, astream, samples, sent, len(samples), sample_rate)
            container.mux(astream.encode(None))
    tmp.replace(path)
    return path


def _send_audio(container, astream, samples: np.ndarray, start: int, stop: int, rate: int) -> int:
    if stop <= start:
        return start
    chunk = np.ascontiguousarray(samples[None, start:stop])
    af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
    af.sample_rate = rate
    af.pts = start
    container.mux(astream.encode(af))
    return stop


def _yuv420_frame(rgb: np.ndarray) -> av.VideoFrame:
    """RGB -> BT.601 limited-range I420 frame with every byte of every plane defined.

    PyAV leaves the row padding of a new frame's planes uninitialised; filling it (edge
    replication) keeps any stray read by the encoder a function of the pixels. The
    conversion is OpenCV's rather than PyAV's cached swscale context, for the same reason.
    """
    h, w = rgb.shape[:2]
    yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
    planes = (
        yuv[:h],
        yuv[h : h + h // 4].reshape(h // 2, w // 2),
        yuv[h + h // 4 :].reshape(h // 2, w // 2),
    )
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, planes, strict=True):
        rows = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        rows[: data.shape[0], : data.shape[1]] = data
        rows[: data.shape[0], data.shape[1] :] = data[:, -1:]
        rows[data.shape[0] :] = rows[data.shape[0] - 1]
    return frame
