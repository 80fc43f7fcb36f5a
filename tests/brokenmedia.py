"""A corpus of broken and awkward media files, made on the spot (tiny, synthetic, fast).

:func:`make_broken_corpus` writes every case into a folder and returns them by name. Both
the in-process analyzer tests (``tests/integration/test_brokenmedia.py``) and the HTTP
service tests post them one by one and check the outcome against :attr:`Case.expect`.

An outcome is written as one of:

- ``abstain:<reason>``: the analyzer answers ABSTAIN with that reason
  (:data:`veracity.status.ABSTAIN_REASONS`);
- ``http:<code>``: the service refuses the upload before decoding it (415 not a video,
  400 empty, 413 over a limit the service test sets);
- ``judged``: a normal verdict (FAKE, UNCERTAIN or REAL).

``expect`` is the set of acceptable outcomes. The ``judged``/``abstain:*`` entries are
what the analyzer was observed to do with the tiny test bundle (tests/conftest.py); the
``http:*`` entries are what the service may answer instead, from the file's first bytes
(:mod:`veracity.media.sniff`) or its probed duration.

Files are tiny (0 B to ~170 KB) and the whole corpus is built in about a second.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.media.encode import write_mp4

__all__ = ["CASES", "JUDGED", "Case", "make_broken_corpus", "outcome"]

JUDGED = "judged"
# Every case, in the order make_broken_corpus returns them (known before it runs, for
# pytest.mark.parametrize).
CASES = (
    "empty", "random_bytes", "text", "truncated", "truncated_faststart", "still_jpeg", "still_png",
    "wav", "aac_only", "no_audio", "no_face", "tiny", "too_short", "long", "rotated", "vfr",
    "audio_8000", "audio_44100", "two_people",
)
SR = 16000


@dataclass
class Case:
    """One file of the corpus.

    Attributes:
        path: the file.
        kind: what is odd about it (``long`` in it marks the file a service duration limit
            can refuse with 413).
        expect: acceptable outcomes (``abstain:<reason>``, ``http:<code>``, ``judged``).
        note: one line for people: what the file is and what was observed.
    """

    path: Path
    kind: str
    expect: set[str]
    note: str


def outcome(verdict: str, reason: str | None) -> str:
    """The outcome string of an analyzer report (``judged`` or ``abstain:<reason>``)."""
    return f"abstain:{reason}" if verdict == "ABSTAIN" else JUDGED


# ------------------------------------------------------------------------------ sources


def _person(name: str, seed: int, size: int = 96, seconds: float = 1.6, fps: int = 25,
            sample_rate: int = SR) -> tuple[list[np.ndarray], np.ndarray]:
    """A synthetic talking head (frames RGB uint8) and its speech (mono float32)."""
    ident = sample_identity(name, np.random.default_rng(seed))
    clip = render(ClipSpec(name, "real", ident, None, seconds, fps, size, size, sample_rate, 20, 2.0, seed))
    return list(clip.frames), clip.audio


def _mp4(path: Path, frames: Sequence[np.ndarray], fps: int, audio: np.ndarray | None,
         sample_rate: int = SR) -> Path:
    return write_mp4(path, frames, fps, audio, sample_rate=sample_rate, preset="ultrafast")


def _write_video(path: Path, frames: Sequence[np.ndarray], pts_ms: Sequence[int], audio: np.ndarray | None,
                 rotation: int = 0, faststart: bool = False) -> Path:
    """H.264 (+ AAC at 16 kHz) in MP4 with PyAV directly: any frame times, a display matrix."""
    with av.open(str(path), "w", format="mp4",
                 options={"movflags": "faststart"} if faststart else {}) as out:
        h, w = frames[0].shape[:2]
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        v.codec_context.time_base = Fraction(1, 1000)
        v.time_base = Fraction(1, 1000)
        v.options = {"preset": "ultrafast", "crf": "23", "threads": "1"}
        v.thread_count = 1
        if rotation:
            v.set_display_rotation(rotation)
        a = None
        if audio is not None:
            a = out.add_stream("aac", rate=SR)
            a.layout = "mono"
            a.bit_rate = 48000
        for img, t in zip(frames, pts_ms, strict=True):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
            vf.pts = int(t)
            vf.time_base = Fraction(1, 1000)
            out.mux(v.encode(vf))
        out.mux(v.encode(None))
        if a is not None:
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, :], dtype=np.float32),
                                            format="flt", layout="mono")
            af.sample_rate, af.pts = SR, 0
            out.mux(a.encode(af))
            out.mux(a.encode(None))
    return path


def _audio_only_mp4(path: Path, audio: np.ndarray) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        a = out.add_stream("aac", rate=SR)
        a.layout = "mono"
        a.bit_rate = 48000
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, :], dtype=np.float32),
                                        format="flt", layout="mono")
        af.sample_rate, af.pts = SR, 0
        out.mux(a.encode(af))
        out.mux(a.encode(None))
    return path


def _wav(path: Path, audio: np.ndarray) -> Path:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    path.write_bytes(buf.getvalue())
    return path


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    n = round(len(audio) * rate / SR)
    return np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)


# ------------------------------------------------------------------------------ the corpus


def make_broken_corpus(out: Path) -> dict[str, Case]:
    """Write every case into ``out`` (created) and return them by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames, audio = _person("alice", 1)  # 1.6 s, 96x96, 25 fps
    cases: dict[str, Case] = {}

    def add(name: str, path: Path, kind: str, expect: set[str], note: str) -> None:
        cases[name] = Case(path, kind, expect, note)

    # --- not a video at all
    p = out / "empty.mp4"
    p.write_bytes(b"")
    add("empty", p, "empty", {"http:400", "abstain:empty"}, "0 bytes: empty in process")

    p = out / "random.mp4"
    p.write_bytes(rng.bytes(4096))
    add("random_bytes", p, "garbage", {"abstain:corrupt"},
        "4 KB of random bytes named .mp4: sniffed unknown, so decoded; FFmpeg cannot open it")

    p = out / "text.mp4"
    p.write_text("This is not a video.\nIt is a text file with an .mp4 name.\n" * 20)
    add("text", p, "text", {"http:415", "abstain:corrupt"}, "plain text named .mp4: corrupt in process")

    good = _mp4(out / "good.mp4", frames, 25, audio)
    data = good.read_bytes()
    p = out / "truncated.mp4"
    p.write_bytes(data[: int(len(data) * 0.4)])
    good.unlink()
    add("truncated", p, "truncated", {"abstain:corrupt"},
        "a good 1.6 s clip cut at 40% of its bytes: its index (moov, written last) is lost, "
        "FFmpeg cannot open it")

    # The index first (faststart): what is left of the data still plays, then stops short.
    whole = _write_video(out / "whole.mp4", frames * 2, [i * 40 for i in range(2 * len(frames))],
                         np.tile(audio, 2), faststart=True)
    data = whole.read_bytes()
    p = out / "truncated_faststart.mp4"
    p.write_bytes(data[: int(len(data) * 0.4)])
    whole.unlink()
    add("truncated_faststart", p, "truncated", {JUDGED},
        "a 3.2 s clip with its index first (faststart) cut at 40% of its bytes: the first ~1.05 s "
        "decodes and is judged (media.duration_s still says 3.2)")

    _, jpg = cv2.imencode(".jpg", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    p = out / "still_jpeg.mp4"
    p.write_bytes(jpg.tobytes())
    add("still_jpeg", p, "image", {"http:415", "abstain:unsupported"}, "one JPEG frame named .mp4: unsupported in process")

    _, png = cv2.imencode(".png", cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    p = out / "still_png.mp4"
    p.write_bytes(png.tobytes())
    add("still_png", p, "image", {"http:415", "abstain:unsupported"}, "one PNG frame named .mp4: unsupported in process")

    add("wav", _wav(out / "speech.wav", audio), "audio_only", {"http:415", "abstain:no_video"},
        "16 kHz PCM WAV: no_video in process")
    add("aac_only", _audio_only_mp4(out / "aac_only.mp4", audio), "audio_only", {"http:415", "abstain:no_video"},
        "MP4 (brand isom) with one AAC stream: its head looks like a video, so the service "
        "decodes it too: no_video")

    # --- a video, but not one that can be judged
    add("no_audio", _mp4(out / "mute.mp4", frames, 25, None), "no_audio", {"abstain:no_audio"},
        "talking head without an audio stream (the tiny bundle listens)")

    ramp = np.linspace(0, 255, 96)[None, :, None] * np.ones((96, 1, 3))
    no_face = [np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8) for _ in range(40)]
    add("no_face", _mp4(out / "gradient.mp4", no_face, 25, audio), "no_face", {"abstain:no_face"},
        "gradient + noise with speech: a face in 0% of frames")

    tiny = [cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in frames]
    add("tiny", _mp4(out / "tiny.mp4", tiny, 25, audio), "too_small", {"abstain:too_small"}, "16x16 frames (below extract.min_side=32)")

    short_frames, short_audio = _person("bob", 2, seconds=0.3)
    add("too_short", _mp4(out / "short.mp4", short_frames, 25, short_audio), "too_short",
        {"abstain:too_short"}, "0.3 s: 4 sampled frames, below the bundle's 0.5 s")

    # --- awkward but judgeable
    long_frames, long_audio = _person("carol", 3, size=64, seconds=2.0, fps=10)
    long_frames, long_audio = long_frames * 4, np.tile(long_audio, 4)
    add("long", _mp4(out / "long.mp4", long_frames, 10, long_audio), "long", {JUDGED, "http:413"},
        "8 s at 64x64, 10 fps: judged in process; a service limit below 8 s gives 413")

    # Stored turned 90 degrees clockwise; the display matrix turns it back upright.
    turned = [np.ascontiguousarray(np.rot90(f, k=-1)) for f in frames]
    add("rotated", _write_video(out / "rotated.mp4", turned, [i * 40 for i in range(len(turned))], audio,
                                rotation=90),
        "rotated", {JUDGED},
        "pixels stored turned 90 deg clockwise, display matrix 90 deg counter-clockwise "
        "(VideoStream.set_display_rotation): read upright, judged (no_face would mean it was ignored)")

    # Irregular frame times: keep ~2/3 of the frames, jitter their times by up to 12 ms.
    keep = [i for i in range(len(frames)) if i == 0 or rng.random() < 0.67]
    pts = [0] + [i * 40 + int(rng.integers(-12, 13)) for i in keep[1:]]
    add("vfr", _write_video(out / "vfr.mp4", [frames[i] for i in keep], pts, audio),
        "vfr", {JUDGED}, "variable frame rate: ~2/3 of 25 fps frames kept, pts jittered +-12 ms "
        "(1 ms time base)")

    for rate in (8000, 44100):
        add(f"audio_{rate}", _mp4(out / f"audio_{rate}.mp4", frames, 25, _resample(audio, rate), sample_rate=rate),
            "odd_audio_rate", {JUDGED}, f"AAC at {rate} Hz (resampled to 16 kHz)")

    right, _ = _person("dave", 4)
    two = [np.concatenate(pair, axis=1) for pair in zip(frames, right, strict=True)]
    add("two_people", _mp4(out / "two_people.mp4", two, 25, audio), "two_people", {JUDGED},
        "two talking heads side by side (192x96)")
    assert tuple(cases) == CASES, "CASES is out of date"
    return cases
