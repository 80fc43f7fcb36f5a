"""Write MP4 files (H.264 video + AAC audio) with PyAV, byte-for-byte reproducibly."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
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
    its input, so a corpus generated twice has identical bytes (data.dvc relies on it).

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
    with av.open(str(tmp), "w", format="mp4") as container:
        vstream = None
        astream = None
        for i, frame in enumerate(frames):
            if vstream is None:
                h, w = frame.shape[:2]
                vstream = container.add_stream("libx264", rate=fps)
                vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
                vstream.thread_count = 1
                vstream.options = {"crf": str(crf), "preset": preset}
                if audio is not None:
                    astream = container.add_stream("aac", rate=sample_rate)
                    astream.layout = "mono"
                    astream.bit_rate = audio_bitrate
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            container.mux(vstream.encode(vf))
        if vstream is None:
            raise ValueError(f"{path}: no frames to encode")
        container.mux(vstream.encode(None))
        if astream is not None and audio is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)[None, :]
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="flt", layout="mono")
            af.sample_rate = sample_rate
            af.pts = 0
            container.mux(astream.encode(af))
            container.mux(astream.encode(None))
    tmp.replace(path)
    return path
