"""What a file must be before the service spends an analysis on it (routes and job workers alike).

The content is sniffed from its first bytes (empty, text, a still image or audio alone are
refused with a specific error, never decoded as video), then probed for its duration and
frame size against the caller's limits. A file that cannot even be probed is not refused
here: the analyzer turns it into ``ABSTAIN`` with extraction's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veracity.media.decode import MediaError, probe
from veracity.media.sniff import HEAD_BYTES, sniff


@dataclass(frozen=True)
class Refusal:
    """Why a file is not analysed: the HTTP status a route answers, a code and a sentence."""

    status: int
    error: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


def admit(path: Path | str, *, max_duration_s: float, max_pixels: int, duration_setting: str,
          too_long_hint: str = "") -> Refusal | None:
    """None when ``path`` may be analysed, else the :class:`Refusal`."""
    with open(path, "rb") as f:
        kind = sniff(f.read(HEAD_BYTES))
    if kind.kind == "empty":
        return Refusal(400, "empty", "the uploaded file is empty")
    if kind.kind == "image":
        return Refusal(415, "still_image", f"a still image ({kind.format}), not a video: send frames to "
                                           "/check_frame_batch")
    if kind.kind == "audio":
        return Refusal(415, "audio_only", f"an audio file ({kind.format}) without video: nothing to look at")
    if kind.kind == "text":
        return Refusal(415, "not_media", "the upload is text, not a video")
    try:
        info = probe(path)
    except MediaError:
        return None
    if info.duration_s is not None and info.duration_s > max_duration_s:
        return Refusal(413, "too_long", f"{info.duration_s:.0f} s of video exceeds the limit of "
                                        f"{max_duration_s:g} s ({duration_setting}){too_long_hint}",
                       {"limit_s": max_duration_s})
    if info.width and info.height and info.width * info.height > max_pixels:
        return Refusal(413, "too_large_frame", f"{info.width}x{info.height} frames exceed the limit of "
                                               f"{max_pixels} pixels (VERACITY_MAX_PIXELS)")
    return None
