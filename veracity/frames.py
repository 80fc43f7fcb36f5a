"""Still frames -> per-frame and pooled probabilities (the service's ``check_frame_batch``).

A meeting server posts a batch of JPEG/PNG frames of one participant (about 27) and wants
a probability per frame within seconds. This module owns that computation, and it runs
the frames through the code the training data went through, not a copy of it:

1. **Decoding** (:func:`decode_image`): the content is sniffed from its magic bytes (JPEG
   ``FF D8 FF``, PNG ``89 50 4E 47``; anything else is refused), its size is read from the
   header before anything is allocated, then OpenCV decodes it to RGB. A frame that cannot
   be used gets a :class:`FrameError` whose ``reason`` says why (:data:`FRAME_REASONS`).
2. **Extraction**: :class:`ImageReader` makes the decoded images look like the
   :class:`~veracity.media.decode.FrameReader` that :func:`veracity.extract._video_part`
   consumes: consecutive samples at the bundle contract's fps, decoded lazily as the
   extraction loop asks for them. Faces are detected on every frame, each time in the
   whole frame (``detect_every=1``, ``scan_every=1`` over the bundle's extraction
   settings: frames are sparse, so coasting between detections, or looking only near
   the last one, would follow a face across seconds), tracked, cropped, and their optical
   flow computed, into a temporary record (:class:`~veracity.features.RecordWriter`).
   With ``cropped=True`` each image is the face crop itself: the whole image is the box
   (:class:`WholeImageDetector`, margin 0) and nothing is detected.
3. **Windows** of the primary kept face track (:class:`~veracity.data.WindowDataset`, no
   audio) -> :meth:`Bundle.window_logits <veracity.bundle.Bundle.window_logits>` of the
   **video members only** (the audio members are not run on silence).
4. **Scores**: per member, its pooling over the batch's windows -> its calibrator; the
   batch's probability is the highest of the chosen members' (the modality rule of
   :func:`veracity.decision.modality_scores`), judged with the bundle's video-only
   thresholds (``Bundle.modality_thresholds["video"]``, fitted by ``calibrate``).

**Per-frame probability**: a frame is scored as a video made of the windows that cover
it: per member, its pooling over the logits of the windows holding that frame, then its
calibrator; the frame's probability is the highest over the chosen members (as for the
batch). So it is calibrated, on the batch probability's scale, and a frame inside one
window only gets that window's calibrated probability. The members' per-frame head
(``DetectorOutput.frame_scores``) is deliberately not used: training puts no label on it
(only an optional smoothness penalty), so it has no calibrated meaning. A frame without
the judged face (``face: false``) has no probability (null): it is never scored as real.

**Evidence**: a batch whose frames cannot be judged gets ``ABSTAIN`` with a reason
(:data:`BATCH_REASONS`): ``corrupt`` (no frame decodes), ``too_short`` (fewer decodable
frames than half a model window, or shorter than the bundle's ``min_duration_s`` at the
contract's fps), ``no_face`` (faces in fewer than the bundle's ``min_face_ratio`` of the
frames, no face track kept, or fewer face frames than half a window), ``no_thresholds``
(the bundle predates video-only thresholds) or ``error`` (a bug of ours, logged with its
traceback). No face is never REAL.

:class:`ParticipantEvidence` keeps each participant's recent window logits across
batches and gives the running call, so a meeting banner does not flicker with each batch.
The public entry is :meth:`veracity.analyzer.Analyzer.check_frames`.
"""

from __future__ import annotations

import logging
import math
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from veracity.bundle import Bundle, BundleMember
from veracity.calibration import Calibrator, Pooling
from veracity.config import ExtractConfig
from veracity.data import ClipInfo, WindowDataset, collate
from veracity.decision import Thresholds
from veracity.extract import _video_part
from veracity.features import ClipRecord, RecordWriter, record_dir
from veracity.lineage import plain
from veracity.media.faces import Detection
from veracity.status import FRAME_BATCH_REASONS

__all__ = [
    "BATCH_REASONS",
    "FRAME_REASONS",
    "MAX_BATCH_FRAMES",
    "MAX_PIXELS",
    "REQUEST_REASONS",
    "FrameBatchReport",
    "FrameError",
    "FrameResult",
    "ImageFrame",
    "ImageReader",
    "ParticipantEvidence",
    "VideoScorer",
    "WholeImageDetector",
    "as_rgb",
    "decode_image",
    "score_frames",
    "square_crop",
    "video_members",
]

log = logging.getLogger(__name__)

REPORT_VERSION = 1
MODALITY = "video"
# Why one posted frame is not used (FrameResult.reason).
FRAME_REASONS = ("empty", "not_an_image", "undecodable", "too_large", "too_small")
# Why a whole batch is refused (FrameError raised: the service answers 4xx).
REQUEST_REASONS = ("no_frames", "too_many_frames", "unknown_member", "member_needs_audio")
# Why a batch gets ABSTAIN.
BATCH_REASONS = FRAME_BATCH_REASONS
# 4K UHD: a meeting frame is far smaller; a bigger one is a mistake or a decompression bomb.
MAX_PIXELS = 3840 * 2160
# The meeting server posts ~27 frames; frames are decoded one at a time, so this bounds
# the time of one request, not its memory.
MAX_BATCH_FRAMES = 128
_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG"
_CLIP_ID = "frames"


class FrameError(ValueError):
    """A frame (or a whole request) that cannot be used, with a machine-readable reason.

    Attributes:
        reason: for one frame, one of :data:`FRAME_REASONS`; for a request, one of
            :data:`REQUEST_REASONS`.
        message: one line for people; ``str(e)``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


# ----------------------------------------------------------------------------- decoding


def _png_size(data: bytes) -> tuple[int, int] | None:
    # Signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4), big-endian.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first start-of-frame segment, or None if not found."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan: no frame header before it
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return (w, h) if h > 0 else None  # height 0: set later by a DNL segment
        if length < 2:
            return None
        i += 2 + length
    return None


def _check_size(w: int, h: int, max_pixels: int, min_side: int, kind: str) -> None:
    if w * h > max_pixels:
        raise FrameError("too_large", f"{kind} of {w}x{h} pixels exceeds the {max_pixels}-pixel limit")
    if min(w, h) < min_side:
        raise FrameError("too_small", f"{kind} of {w}x{h} pixels is below the {min_side} px minimum side")


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = 32) -> np.ndarray:
    """Decode one posted JPEG or PNG frame.

    The format is sniffed from the magic bytes, never from a name or a declared type; the
    size is read from the header and checked before the pixels are decoded.

    Args:
        data: the file's bytes.
        max_pixels: largest width x height accepted.
        min_side: smallest side accepted (extraction's ``extract.min_side``).

    Returns:
        (H, W, 3) RGB uint8 array (alpha dropped, 16-bit reduced to 8, grey expanded).

    Raises:
        FrameError: ``empty`` (no bytes), ``not_an_image`` (neither JPEG nor PNG),
            ``undecodable`` (the decoder fails), ``too_large`` or ``too_small``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FrameError("not_an_image", f"expected the image's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise FrameError("empty", "empty frame (0 bytes)")
    if data.startswith(_JPEG):
        kind, size = "JPEG", _jpeg_size(data)
    elif data.startswith(_PNG):
        kind, size = "PNG", _png_size(data)
    else:
        raise FrameError("not_an_image", f"not a JPEG or PNG image (starts with {data[:4].hex(' ')})")
    if size is not None:
        _check_size(*size, max_pixels, min_side, kind)
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise FrameError("undecodable", f"{kind} could not be decoded: {str(exc).strip().splitlines()[-1]}") from None
    if bgr is None or bgr.ndim != 3 or bgr.size == 0:
        raise FrameError("undecodable", f"{kind} could not be decoded ({len(data)} bytes, damaged or truncated)")
    h, w = bgr.shape[:2]
    _check_size(w, h, max_pixels, min_side, kind)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def as_rgb(image: bytes | np.ndarray, max_pixels: int = MAX_PIXELS, min_side: int = 32) -> np.ndarray:
    """An input frame as (H, W, 3) RGB uint8: bytes are decoded (:func:`decode_image`); an
    array must already be RGB (or grey) uint8.

    Raises:
        FrameError: as :func:`decode_image`; ``not_an_image`` for an array of another shape or type.
    """
    if not isinstance(image, np.ndarray):
        return decode_image(image, max_pixels, min_side)
    arr = image
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise FrameError("not_an_image", f"expected an (H, W, 3) RGB uint8 array, got {arr.shape} {arr.dtype}")
    if arr.size == 0:
        raise FrameError("empty", f"empty image array {arr.shape}")
    _check_size(arr.shape[1], arr.shape[0], max_pixels, min_side, "image")
    if arr.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(arr[..., :3])


def square_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """What extraction cuts from a whole-image box with no margin: the square of the longer
    side centred on the image (edges replicated), resized to ``size`` with INTER_AREA."""
    h, w = rgb.shape[:2]
    side = max(w, h)
    x0, y0 = int(np.floor(w / 2 - side / 2 + 0.5)), int(np.floor(h / 2 - side / 2 + 0.5))
    sq = _crop(rgb, x0, y0, x0 + side, y0 + side)
    return cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA)


def _crop(rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``rgb[y0:y1, x0:x1]`` with the parts outside the image filled by edge replication."""
    h, w = rgb.shape[:2]
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return rgb[y0:y1, x0:x1].copy()
    ys = np.clip(np.arange(y0, y1), 0, h - 1)
    xs = np.clip(np.arange(x0, x1), 0, w - 1)
    return np.ascontiguousarray(rgb[ys[:, None], xs[None, :]])


# ----------------------------------------------------------------------------- the reader adapter


class ImageFrame:
    """One still image dressed as a :class:`~veracity.media.decode.SampledFrame`.

    Attributes:
        index: sample index (0, 1, ...) among the frames that decoded.
        time: ``index / fps``: the frames are taken as consecutive samples.
        width, height: the image's size.
        rotation: always 0 (decoded images are upright).
        position: the frame's place in the posted batch (undecodable frames included).
    """

    __slots__ = ("_gray", "_rgb", "height", "index", "position", "rotation", "time", "width")

    def __init__(self, rgb: np.ndarray, index: int, time: float, position: int | None = None) -> None:
        rgb = np.ascontiguousarray(rgb)
        rgb.flags.writeable = False
        self._rgb = rgb
        self._gray: np.ndarray | None = None
        self.index = index
        self.time = time
        self.position = index if position is None else position
        self.height, self.width = rgb.shape[:2]
        self.rotation = 0

    def __repr__(self) -> str:
        return f"ImageFrame(index={self.index}, time={self.time:.3f}, size={self.width}x{self.height})"

    def gray(self) -> np.ndarray:
        """Full-range luma (read-only), what the face detector reads."""
        if self._gray is None:
            g = cv2.cvtColor(self._rgb, cv2.COLOR_RGB2GRAY)
            g.flags.writeable = False
            self._gray = g
        return self._gray

    def y_plane(self) -> np.ndarray:
        """The luma plane: full range here (a decoded video gives limited range; the Haar
        cascade normalises each window's contrast, so its detections do not depend on it)."""
        return self.gray()

    def rgb(self) -> np.ndarray:
        """The whole image, RGB, read-only."""
        return self._rgb

    def crop_rgb(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """RGB of the box ``[y0:y1, x0:x1]``, edges replicated outside the image (as
        :meth:`SampledFrame.crop_rgb <veracity.media.decode.SampledFrame.crop_rgb>`).

        Raises:
            ValueError: the box is empty.
        """
        x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"empty crop box ({x0}, {y0}, {x1}, {y1})")
        return _crop(self._rgb, x0, y0, x1, y1)

    def crop_resized(self, x0: int, y0: int, x1: int, y1: int, size: int) -> np.ndarray:
        """:meth:`crop_rgb` area-averaged to ``(size, size)`` (as
        :meth:`SampledFrame.crop_resized <veracity.media.decode.SampledFrame.crop_resized>`)."""
        return cv2.resize(self.crop_rgb(x0, y0, x1, y1), (size, size), interpolation=cv2.INTER_AREA)


class ImageReader:
    """A sequence of posted images that reads like a :class:`~veracity.media.decode.FrameReader`.

    Iterating decodes one image at a time (memory holds the few frames extraction's
    prefetch has in flight, not the batch) and yields an :class:`ImageFrame` per image that
    decodes, numbered consecutively at ``fps``. An image that does not is skipped and kept in
    :attr:`rejected` with its :class:`FrameError`.

    Args:
        images: encoded bytes (JPEG/PNG) or RGB uint8 arrays.
        fps: the sampling rate the frames are taken at (the bundle contract's).
        prepare: applied to each decoded RGB image before it is yielded (e.g. :func:`square_crop`).
        max_pixels, min_side: limits of :func:`decode_image`.

    Attributes:
        decoded: images decoded during the latest pass.
        sampled: frames yielded during the latest pass.
        errors: always empty (a bad image is a rejected frame, not a stream error).
        rejected: position in ``images`` -> the error of each image that did not decode.
        positions: position in ``images`` of each yielded frame, in order.
        sizes: position -> (width, height) of each decoded image, before ``prepare``.
    """

    def __init__(self, images: Sequence[bytes | np.ndarray], fps: float,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                 max_pixels: int = MAX_PIXELS, min_side: int = 32) -> None:
        if not fps or fps <= 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        self.images = images
        self.fps = float(fps)
        self.prepare = prepare
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.errors: list[str] = []
        self.decoded = 0
        self.sampled = 0
        self.rejected: dict[int, FrameError] = {}
        self.positions: list[int] = []
        self.sizes: dict[int, tuple[int, int]] = {}

    def __iter__(self) -> Iterator[ImageFrame]:
        self.decoded = self.sampled = 0
        self.rejected, self.positions, self.sizes = {}, [], {}
        for pos, image in enumerate(self.images):
            try:
                rgb = as_rgb(image, self.max_pixels, self.min_side)
            except FrameError as exc:
                self.rejected[pos] = exc
                continue
            self.decoded += 1
            self.sizes[pos] = (int(rgb.shape[1]), int(rgb.shape[0]))
            if self.prepare is not None:
                rgb = self.prepare(rgb)
            frame = ImageFrame(rgb, self.sampled, self.sampled / self.fps, pos)
            self.positions.append(pos)
            self.sampled += 1
            yield frame

    def close(self) -> None:
        """Nothing to release (the FrameReader interface)."""

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WholeImageDetector:
    """A "detector" that finds one face filling the whole image (``cropped=True``: the
    client sent face crops)."""

    name = "whole_image"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        h, w = gray.shape[:2]
        return [Detection(box=(0.0, 0.0, float(w), float(h)), score=1.0)]

    def detect_near(self, gray: np.ndarray, boxes: list) -> list[Detection]:
        return self.detect(gray)


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class VideoScorer:
    """What turns window logits into the video-only call: the chosen members' pooling and
    calibrators and the bundle's video-only thresholds (None when the bundle has none).

    Attributes:
        members: ``(name, pooling, calibrator)`` of each chosen video member.
        thresholds: ``Bundle.modality_thresholds["video"]``, or None.
        bundle_key: identity of the bundle (sha256 of ``bundle.json`` when known): logits of
            different bundles are never pooled together.
    """

    members: tuple[tuple[str, Pooling, Calibrator], ...]
    thresholds: Thresholds | None
    bundle_key: str

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.members]

    def member_scores(self, logits: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
        """Per member with logits: its pooled logit and calibrated probability."""
        out = {}
        for name, pooling, cal in self.members:
            z = np.asarray(logits.get(name, ()), dtype=np.float64).ravel()
            if z.size:
                pooled = pooling.one(z)
                out[name] = (pooled, float(cal.prob(pooled)))
        return out

    def probability(self, logits: Mapping[str, np.ndarray]) -> float | None:
        """The highest calibrated member probability (None without any logits)."""
        scores = self.member_scores(logits)
        return max(p for _, p in scores.values()) if scores else None


@dataclass
class FrameResult:
    """One posted frame.

    Attributes:
        index: its position in the batch.
        ok: it decoded.
        reason: why it was not used (:data:`FRAME_REASONS`), else None.
        message: one line for people when it was not used.
        width, height: its size (None if it did not decode).
        face: it shows the judged person's face (a crop of the primary kept face track,
            detected or briefly coasted by the tracker); false frames have no probability.
        detected: the face detector fired on it (``cropped``: always, by definition).
        box: the face crop's box ``[x0, y0, x1, y1]`` in the frame's pixels (the square
            extraction cuts; may reach past the edges), or None.
        probability: calibrated probability of manipulation of the windows covering it
            (module docstring), or None (no face, or the batch abstained).
        windows: how many model windows cover it.
    """

    index: int
    ok: bool = False
    reason: str | None = None
    message: str = ""
    width: int | None = None
    height: int | None = None
    face: bool = False
    detected: bool = False
    box: list[float] | None = None
    probability: float | None = None
    windows: int = 0


@dataclass
class FrameBatchReport:
    """What :meth:`Analyzer.check_frames <veracity.analyzer.Analyzer.check_frames>` returns.

    Attributes:
        verdict: ``FAKE``, ``UNCERTAIN``, ``REAL`` or ``ABSTAIN``.
        probability: calibrated video-only probability of manipulation of the batch (None
            for ABSTAIN).
        reason: why it abstained (:data:`BATCH_REASONS`), else None.
        message: one line for people.
        modality: ``video``: only video members judge still frames.
        member: the member asked for, or None (every video member; the highest counts).
        members: per chosen member: pooled ``logit``, calibrated ``probability``, ``windows``.
        thresholds: ``{real_below, fake_at}`` of the video-only call (empty without them).
        frames: one :class:`FrameResult` per posted frame, in order.
        n_frames, n_decoded, n_face: frames posted, decoded, showing the judged face.
        face_ratio: share of decoded frames with any tracked face (extraction's measure).
        windows: model windows scored.
        track: id of the judged face track, or None.
        cropped: frames were taken as face crops.
        timings: seconds per step.
        bundle: identity of the bundle.
        window_logits: per member, the logits of the batch's windows (not in :meth:`to_dict`;
            :class:`ParticipantEvidence` pools them across batches).
        scorer: pooling, calibrators and thresholds of the call (not in :meth:`to_dict`).
    """

    verdict: str
    probability: float | None
    reason: str | None = None
    message: str = ""
    modality: str = MODALITY
    member: str | None = None
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    frames: list[FrameResult] = field(default_factory=list)
    n_frames: int = 0
    n_decoded: int = 0
    n_face: int = 0
    face_ratio: float = 0.0
    windows: int = 0
    track: int | None = None
    cropped: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    bundle: dict[str, Any] = field(default_factory=dict)
    window_logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    scorer: VideoScorer | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (no NaN, no NumPy types); without the logits and the scorer."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("window_logits", "scorer")}
        out["frames"] = [{f.name: getattr(fr, f.name) for f in fields(fr)} for fr in self.frames]
        return {"version": REPORT_VERSION, **plain(out)}


class _Abstain(Exception):  # noqa: N818 - control flow inside score_frames, never escapes
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


def video_members(bundle: Bundle, member: str | None = None) -> list[BundleMember]:
    """The members that judge still frames: every ``video`` member, or the one named.

    Raises:
        FrameError: ``unknown_member`` (no such member), ``member_needs_audio`` (it listens),
            or ``unknown_member`` when the bundle has no video member at all.
    """
    if member is not None:
        found = [m for m in bundle.members if m.name == member]
        if not found:
            vids = [m.name for m in bundle.members if m.modality == MODALITY]
            raise FrameError("unknown_member", f"no member {member!r} in this bundle; video members: {vids}")
        if found[0].modality != MODALITY:
            raise FrameError("member_needs_audio", f"member {member!r} is a {found[0].modality} member: it "
                                                   "needs audio, which still frames do not have; choose a "
                                                   "video member")
        return found
    chosen = [m for m in bundle.members if m.modality == MODALITY]
    if not chosen:
        raise FrameError("unknown_member", f"this bundle has no video member (members: {bundle.modalities}); "
                                           "it cannot judge still frames")
    return chosen


def score_frames(bundle: Bundle, images: Sequence[bytes | np.ndarray], *, extract_cfg: ExtractConfig | None = None,
                 member: str | None = None, cropped: bool = False, batch_size: int = 16,
                 lock: threading.Lock | None = None, identity: Mapping[str, Any] | None = None,
                 max_frames: int = MAX_BATCH_FRAMES, max_pixels: int = MAX_PIXELS) -> FrameBatchReport:
    """Score a batch of still frames of one person (see the module docstring).

    Never raises for bad frames: each gets its reason and the rest are scored; a batch that
    cannot be judged gets ``ABSTAIN``.

    Args:
        bundle: the bundle.
        images: encoded JPEG/PNG bytes or RGB uint8 arrays, in time order.
        extract_cfg: the bundle's extraction settings (``bundle.json["extract"]``); faces are
            detected in the whole of every frame whatever its ``detect_every`` and ``scan_every``.
        member: judge with this video member only; None: every video member (the highest
            probability counts).
        cropped: each image is a face crop: the whole image is the face box, no detection.
        batch_size: windows per forward pass.
        lock: held while the members run (the analyzer's, whose frame-score hooks must not
            see these windows).
        identity: the bundle's identity for the report (the analyzer's).
        max_frames: most frames in one batch.
        max_pixels: largest frame (width x height).

    Returns:
        The :class:`FrameBatchReport`.

    Raises:
        FrameError: the batch is empty or longer than ``max_frames`` (``no_frames``,
            ``too_many_frames``), or ``member`` is unknown or not a video member.
    """
    t0 = time.perf_counter()
    if isinstance(images, bytes | bytearray | memoryview | str):
        raise TypeError("images must be a sequence of frames (a list of bytes or arrays), not one "
                        f"{type(images).__name__}")
    images = list(images)
    if not images:
        raise FrameError("no_frames", "the batch holds no frames")
    if len(images) > max_frames:
        raise FrameError("too_many_frames", f"{len(images)} frames in one batch; at most {max_frames}")
    chosen = video_members(bundle, member)
    cfg = extract_cfg or ExtractConfig()
    identity = dict(identity or {})
    scorer = VideoScorer(members=tuple((m.name, m.pooling, m.calibrator) for m in chosen),
                         thresholds=bundle.modality_thresholds.get(MODALITY),
                         bundle_key=str(identity.get("sha256") or f"object:{id(bundle)}"))
    th = scorer.thresholds
    report = FrameBatchReport(verdict="ABSTAIN", probability=None, member=member, cropped=cropped,
                              frames=[FrameResult(index=i) for i in range(len(images))], n_frames=len(images),
                              thresholds={"real_below": th.real_below, "fake_at": th.fake_at} if th else {},
                              bundle=identity, scorer=scorer)
    timings: dict[str, float] = {}
    try:
        _score(bundle, images, cfg, chosen, scorer, cropped, batch_size, lock, max_pixels, report, timings)
    except _Abstain as ab:
        report.reason, report.message = ab.reason, ab.message
    except Exception as exc:  # noqa: BLE001 - a report, never a traceback, never REAL
        log.warning("frame batch scoring failed", exc_info=True)
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        report.reason, report.message = "error", f"scoring failed: {type(exc).__name__}: {text}"[:500]
    if report.verdict == "ABSTAIN":  # never a probability without a call
        report.probability = None
        for fr in report.frames:
            fr.probability = None
    timings["total_s"] = time.perf_counter() - t0
    report.timings = {k: round(v, 4) for k, v in timings.items()}
    return report


def _score(bundle: Bundle, images: list[bytes | np.ndarray], cfg: ExtractConfig, chosen: list[BundleMember],
           scorer: VideoScorer, cropped: bool, batch_size: int, lock: threading.Lock | None, max_pixels: int,
           report: FrameBatchReport, timings: dict[str, float]) -> None:
    c = bundle.contract
    half = -(-c.frames_per_window // 2)
    frames = report.frames
    with tempfile.TemporaryDirectory(prefix="veracity-frames-", ignore_cleanup_errors=True) as tmp:
        t = time.perf_counter()
        # Sparse frames: scan each one whole (a face may have moved anywhere since the last).
        every = cfg.model_copy(update={"detect_every": 1, "scan_every": 1})
        if cropped:
            # The image is the crop: a whole-image box and no margin give back the image itself.
            reader = ImageReader(images, c.fps, prepare=lambda rgb: square_crop(rgb, c.face_size),
                                 max_pixels=max_pixels, min_side=cfg.min_side)
            facts = _extract(reader, Path(tmp), every, replace(c, face_margin=0.0), WholeImageDetector())
        else:
            reader = ImageReader(images, c.fps, max_pixels=max_pixels, min_side=cfg.min_side)
            facts = _extract(reader, Path(tmp), every, c, None)
        timings["extract_s"] = time.perf_counter() - t
        for pos, err in reader.rejected.items():
            frames[pos].reason, frames[pos].message = err.reason, err.message
        for pos, (w, h) in reader.sizes.items():
            frames[pos].ok, frames[pos].width, frames[pos].height = True, w, h
        n = reader.sampled
        report.n_decoded = n
        report.face_ratio = float(facts["face_ratio"])
        rec = ClipRecord(record_dir(Path(tmp), _CLIP_ID))
        track = rec.primary_track()
        rows = rec.track_crops(track) if track is not None else np.zeros(0, np.int64)
        crop_frame = np.asarray(rec.array("crop_frame"))
        boxes = np.asarray(rec.array("crop_box"), dtype=np.float64)
        detected = np.asarray(rec.array("crop_detected"))
        for r in rows:
            fr = frames[reader.positions[int(crop_frame[r])]]
            fr.face, fr.detected = True, bool(detected[r])
            fr.box = [0.0, 0.0, float(fr.width), float(fr.height)] if cropped else [float(v) for v in boxes[r]]
        report.n_face = len(rows)
        report.track = track
        _check_evidence(bundle, n, half, facts, track, len(rows), scorer)

        clip = ClipInfo(video_id=_CLIP_ID, record=rec.path, label=0, video_label=math.nan, audio_label=math.nan,
                        method="unknown", split="frames", has_audio=False, track=track)
        ds = WindowDataset([clip], c)
        if len(ds) == 0:
            raise _Abstain("too_short", "no model window fits the batch")
        names = [m.name for m in chosen]
        logits: dict[str, list[np.ndarray]] = {m: [] for m in names}
        t = time.perf_counter()
        for s in range(0, len(ds), batch_size):
            batch, _ = collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))])
            with lock if lock is not None else nullcontext():
                out = bundle.window_logits(batch, members=names)
            for m in names:
                logits[m].append(np.asarray(out[m], dtype=np.float64).reshape(-1))
        timings["forward_s"] = time.perf_counter() - t
        wl = {m: np.concatenate(v) for m, v in logits.items()}
        spans = [(ds.item_start(i), ds.item_length(i)) for i in range(len(ds))]
    report.window_logits = wl
    report.windows = len(spans)
    scores = scorer.member_scores(wl)
    report.members = {m: {"logit": z, "probability": p, "windows": len(spans)} for m, (z, p) in scores.items()}
    prob = max(p for _, p in scores.values())
    assert scorer.thresholds is not None  # _check_evidence abstains without them
    report.probability, report.verdict = prob, scorer.thresholds.verdict(prob)
    who = f" (member {report.member})" if report.member else ""
    report.message = (f"{report.verdict.lower()}: calibrated video-only probability of manipulation {prob:.3f} "
                      f"over {len(spans)} window(s) of {len(rows)} face frame(s){who}")
    for k, r in enumerate(rows):
        covering = [i for i, (s0, ln) in enumerate(spans) if s0 <= k < s0 + ln]
        fr = frames[reader.positions[int(crop_frame[r])]]
        fr.windows = len(covering)
        if covering:
            fr.probability = scorer.probability({m: wl[m][covering] for m in wl})


def _extract(reader: ImageReader, tmp: Path, cfg: ExtractConfig, contract: Any, detector: Any) -> dict[str, Any]:
    """Extraction's own video part over the images, into a temporary record."""
    w = RecordWriter(record_dir(tmp, _CLIP_ID))
    try:
        facts = _video_part(reader, w, cfg, contract, detector=detector)
    except BaseException:
        w.abort()
        raise
    w.commit({"status": "ok", "message": "frames", "tracks": facts["tracks"],
              "index": {k: v for k, v in facts.items() if k not in ("tracks", "decode_errors")}})
    return facts


def _check_evidence(bundle: Bundle, n: int, half: int, facts: Mapping[str, Any], track: int | None,
                    n_face: int, scorer: VideoScorer) -> None:
    """Raise :class:`_Abstain` when the batch cannot be judged (no face is never REAL)."""
    c, ev = bundle.contract, bundle.evidence
    if n == 0:
        raise _Abstain("corrupt", "no frame of the batch could be decoded")
    min_s = ev.min_duration_s if ev is not None else 0.0
    if n < half or n / c.fps < min_s:
        raise _Abstain("too_short", f"{n} decodable frame(s) ({n / c.fps:.2f} s at {c.fps:g} fps): the bundle "
                                    f"needs at least {max(half, math.ceil(min_s * c.fps - 1e-9))}")
    min_ratio = ev.min_face_ratio if ev is not None else 0.0
    ratio = float(facts["face_ratio"])
    if ratio < min_ratio:
        raise _Abstain("no_face", f"a face was found in {ratio:.0%} of the frames (the bundle needs {min_ratio:.0%})")
    if track is None:
        raise _Abstain("no_face", "no face track lasted long enough to be judged")
    if n_face < half:
        raise _Abstain("no_face", f"the face was seen in {n_face} frame(s); a judgement needs at least {half} "
                                  f"(half a {c.frames_per_window}-frame window)")
    if scorer.thresholds is None:
        raise _Abstain("no_thresholds", "this bundle predates video-only thresholds (calibrate's "
                                        "modality_thresholds); rebuild it (dvc repro calibrate ensemble) to judge "
                                        "still frames")


# ----------------------------------------------------------------------------- per participant


@dataclass
class _Participant:
    first_seen: float
    last_seen: float
    bundle_key: str | None = None
    scorer: VideoScorer | None = None
    batches: int = 0
    abstained: int = 0
    frames: int = 0
    face_frames: int = 0
    windows: dict[str, deque] = field(default_factory=dict)  # member -> deque of (time, logit)
    last: dict[str, Any] = field(default_factory=dict)


class ParticipantEvidence:
    """Running video-only call per participant over their recent batches (thread-safe).

    Each :meth:`update` adds the batch's window logits (per member) to the participant's
    recent windows (at most ``max_windows`` per member, none older than ``ttl_s``) and
    pools them all as one video: per member its pooling and calibrator, the highest member
    probability, the video-only thresholds. A single odd batch moves a pool of many windows
    little, so the call does not flicker with each batch. An ABSTAIN batch adds no windows
    and changes nothing but the counts; a batch from another bundle (a new model) starts
    the pool afresh.

    A participant without a batch for ``ttl_s`` is forgotten; beyond ``max_participants``
    the least recently updated is.

    Args:
        ttl_s: seconds without a batch after which a participant is forgotten (and the age
            past which a window leaves the pool).
        max_participants: most participants held.
        max_windows: most windows per member in a participant's pool.
        clock: seconds, for ``first_seen`` / ``last_seen`` and expiry (``time.time``).
    """

    def __init__(self, ttl_s: float = 120.0, max_participants: int = 10_000, max_windows: int = 64,
                 clock: Callable[[], float] = time.time) -> None:
        if ttl_s <= 0 or max_participants < 1 or max_windows < 1:
            raise ValueError("ttl_s, max_participants and max_windows must be positive")
        self.ttl_s = float(ttl_s)
        self.max_participants = int(max_participants)
        self.max_windows = int(max_windows)
        self.clock = clock
        self._lock = threading.Lock()
        self._state: OrderedDict[str, _Participant] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._state)

    def __contains__(self, participant_id: object) -> bool:
        with self._lock:
            self._expire(self.clock())
            return participant_id in self._state

    def update(self, participant_id: str, report: FrameBatchReport) -> dict[str, Any]:
        """Add one batch of a participant and return their running result.

        Args:
            participant_id: who the frames show (the meeting server's id).
            report: the batch's :class:`FrameBatchReport`.

        Returns:
            The running result (plain JSON): ``participant_id``, ``verdict``, ``probability``
            (calibrated, pooled over the recent windows; None for ABSTAIN), ``reason``,
            ``message``, ``thresholds``, ``members`` (per member ``logit``, ``probability``,
            ``windows``), ``windows``, ``batches``, ``abstained_batches``, ``frames``,
            ``face_frames``, ``first_seen``, ``last_seen`` (clock seconds) and ``last_batch``
            (``verdict``, ``probability``, ``reason`` of this batch).
        """
        pid = str(participant_id)
        with self._lock:
            now = self.clock()
            self._expire(now)
            st = self._state.get(pid)
            if st is None:
                st = self._state[pid] = _Participant(first_seen=now, last_seen=now)
                while len(self._state) > self.max_participants:
                    self._state.popitem(last=False)
            self._state.move_to_end(pid)
            st.last_seen = now
            st.batches += 1
            st.abstained += report.verdict == "ABSTAIN"
            st.frames += report.n_frames
            st.face_frames += report.n_face
            st.last = {"verdict": report.verdict, "probability": report.probability, "reason": report.reason,
                       "message": report.message}
            if report.scorer is not None:
                if st.bundle_key is not None and report.scorer.bundle_key != st.bundle_key:
                    st.windows.clear()  # logits of another model do not pool with these
                st.bundle_key, st.scorer = report.scorer.bundle_key, report.scorer
            if report.verdict != "ABSTAIN":
                for name, z in report.window_logits.items():
                    q = st.windows.setdefault(name, deque(maxlen=self.max_windows))
                    q.extend((now, float(v)) for v in np.asarray(z, dtype=np.float64).ravel())
            for q in st.windows.values():
                while q and q[0][0] < now - self.ttl_s:
                    q.popleft()
            return self._result(pid, st)

    def get(self, participant_id: str) -> dict[str, Any] | None:
        """The running result of a participant (None when unknown or expired), adding nothing."""
        with self._lock:
            self._expire(self.clock())
            st = self._state.get(str(participant_id))
            return None if st is None else self._result(str(participant_id), st)

    def forget(self, participant_id: str) -> bool:
        """Drop a participant (e.g. they left the meeting); True if they were held."""
        with self._lock:
            return self._state.pop(str(participant_id), None) is not None

    def _expire(self, now: float) -> None:
        # Entries are in order of their last update, so the stale ones are at the front.
        while self._state:
            pid, st = next(iter(self._state.items()))
            if now - st.last_seen <= self.ttl_s:
                break
            del self._state[pid]

    def _result(self, pid: str, st: _Participant) -> dict[str, Any]:
        sc = st.scorer
        logits = {m: np.array([z for _, z in q]) for m, q in st.windows.items() if q}
        used = {m: v for m, v in logits.items() if sc is not None and m in sc.names}
        th = sc.thresholds if sc is not None else None
        out: dict[str, Any] = {
            "participant_id": pid, "verdict": "ABSTAIN", "probability": None, "reason": None, "message": "",
            "thresholds": {"real_below": th.real_below, "fake_at": th.fake_at} if th else {},
            "members": {}, "windows": max((len(v) for v in used.values()), default=0),
            "batches": st.batches, "abstained_batches": st.abstained, "frames": st.frames,
            "face_frames": st.face_frames, "first_seen": st.first_seen, "last_seen": st.last_seen,
            "last_batch": {k: st.last.get(k) for k in ("verdict", "probability", "reason")},
        }
        if sc is None or not used:
            out["reason"] = st.last.get("reason") or "no_face"
            out["message"] = f"no judged window yet: {st.last.get('message') or 'no frames with a face'}"
            return plain(out)
        scores = sc.member_scores(used)
        out["members"] = {m: {"logit": z, "probability": p, "windows": len(used[m])} for m, (z, p) in scores.items()}
        prob = max(p for _, p in scores.values())
        if th is None:
            out["reason"] = "no_thresholds"
            out["message"] = "this bundle predates video-only thresholds"
            return plain(out)
        out["probability"], out["verdict"] = prob, th.verdict(prob)
        out["message"] = (f"{out['verdict'].lower()}: calibrated video-only probability {prob:.3f} over the "
                          f"{out['windows']} most recent window(s) of {st.batches} batch(es)")
        return plain(out)
