"""Face detection, tracking and square face crops for the extraction stage.

The default detector is OpenCV's frontal-face Haar cascade (Viola and Jones, "Rapid
object detection using a boosted cascade of simple features", CVPR 2001). It ships
inside ``opencv-python-headless<5``, so it works offline and needs no weights download;
a learned detector can replace it through the :class:`FaceDetector` protocol.

On its detection frames the extraction stage calls :meth:`HaarFaceDetector.detect` on
the whole frame now and then and :meth:`HaarFaceDetector.detect_near` (the neighbourhood
of the faces already tracked, at the scale they have) in between, feeds the detections
to one :class:`FaceTracker` per video (so each person keeps one track id and a missed
detection does not lose the face), then cuts crops with :func:`square_box` and
:func:`crop_resize`. :func:`center_box` is the explicit fallback when no face is known.
Nothing here keeps module-level state: every detector and tracker is an ordinary object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

Box = tuple[float, float, float, float]
IntBox = tuple[int, int, int, int]

CASCADE_NAME = "haarcascade_frontalface_default.xml"
# The frontal cascade's window: the smallest face it finds, in its input's pixels.
_WINDOW = 24
# detect_near: how far around a tracked face it looks, as a share of the face's side on
# each side. Between two detections the tracker moves the box by the face's own optical
# flow, so what is left to find is the flow's error and a change of size, not the motion.
NEAR_REACH = 0.25
# detect_near shrinks a neighbourhood by a whole factor (OpenCV's fast INTER_AREA path)
# until the tracked face is at most twice this many pixels: enough for the cascade's 24 px
# window to fit the face at several scales, where the whole-frame pass sees it at 90 px.
NEAR_FACE_PX = 56
# ... and finds faces from this share of the smallest tracked face up to the next bound
# times the largest: a face cannot change size by more between two detections.
NEAR_MIN_SCALE = 0.6
NEAR_MAX_SCALE = 1.6


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in full-frame pixels (x1, y1 exclusive).
        score: detector confidence; higher is more face-like. For the Haar cascade it is
            the last stage's sum (a margin, not a probability).
    """

    box: Box
    score: float


class FaceDetector(Protocol):
    """What the extraction stage needs from any face detector."""

    name: str

    def detect(self, gray: np.ndarray) -> list[Detection]:
        """Faces in one grayscale uint8 frame, boxes in that frame's pixels."""
        ...

    def detect_near(self, gray: np.ndarray, boxes: list[Box]) -> list[Detection]:
        """Faces of about the size of ``boxes`` near them (the faces a tracker follows);
        may be :meth:`detect` itself for a detector with no cheaper local search."""
        ...


def default_cascade_path() -> Path:
    """Where opencv-python ships the frontal face cascade.

    Returns:
        Path of ``haarcascade_frontalface_default.xml`` (it may not exist).

    Raises:
        RuntimeError: when this OpenCV build has no ``cv2.data`` (e.g. OpenCV 5).
    """
    data = getattr(cv2, "data", None)
    if data is None or not hasattr(data, "haarcascades"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} ships no Haar cascades (cv2.data is missing); "
            "install opencv-python-headless<5 or pass cascade_path"
        )
    return Path(data.haarcascades) / CASCADE_NAME


class HaarFaceDetector:
    """Frontal faces with OpenCV's Haar cascade, fast on large frames.

    The frame is shrunk so its longest side is at most ``max_side`` before detection:
    faces in talking-head video are large, so a 720p frame shrunk to 320 px still gives
    faces far above the cascade's 24 px window, at a fraction of the cost.

    Args:
        max_side: longest side the frame is shrunk to (INTER_AREA) before detecting.
        scale_factor: image pyramid step of ``detectMultiScale``.
        min_neighbors: overlapping raw hits a face needs; higher means fewer false faces.
        min_face_frac: smallest face, as a fraction of the frame's shorter side.
        cascade_path: a cascade XML; default is OpenCV's frontal face cascade.

    Raises:
        FileNotFoundError: when the cascade file does not exist.
        RuntimeError: when no path is given and this OpenCV has no bundled cascades.
    """

    name = "haar"

    def __init__(
        self,
        max_side: int = 320,
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
        min_face_frac: float = 0.08,
        cascade_path: str | Path | None = None,
    ):
        if max_side < _WINDOW:
            raise ValueError(f"max_side must be >= {_WINDOW} (the cascade window), got {max_side}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.max_side = int(max_side)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face_frac = float(min_face_frac)
        path = Path(cascade_path) if cascade_path is not None else default_cascade_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"Haar cascade not found at {path}; opencv-python-headless<5 ships it "
                "(OpenCV 5 does not)"
            )
        self.cascade_path = path
        self._cascade: cv2.CascadeClassifier | None = None

    def _classifier(self) -> cv2.CascadeClassifier:
        # Loaded on first use, once per instance: constructing a detector stays cheap and the
        # object can be pickled to worker processes before it has touched the XML.
        if self._cascade is None:
            cascade = cv2.CascadeClassifier(str(self.cascade_path))
            if cascade.empty():
                raise RuntimeError(f"OpenCV could not load the Haar cascade {self.cascade_path}")
            self._cascade = cascade
        return self._cascade

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cascade"] = None  # cv2.CascadeClassifier cannot be pickled; reload lazily
        return state

    def _cascade_rects(self, small: np.ndarray, least: int, most: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) ``x, y, w, h`` rects and their scores in ``small``, faces of ``least`` to
        ``most`` pixels (0: no upper bound)."""
        cascade = self._classifier()
        try:
            # outputRejectLevels keeps only windows that pass every stage (same hits as
            # detectMultiScale) and also returns the last stage's sum: a usable confidence.
            rects, _levels, weights = cascade.detectMultiScale3(
                small, self.scale_factor, self.min_neighbors, minSize=(least, least),
                maxSize=(most, most), outputRejectLevels=True,
            )
        except (cv2.error, AttributeError):
            rects, weights = cascade.detectMultiScale2(
                small, self.scale_factor, self.min_neighbors, minSize=(least, least), maxSize=(most, most)
            )
        return np.asarray(rects, dtype=np.float64).reshape(-1, 4), np.asarray(weights, dtype=np.float64).reshape(-1)

    def detect(self, gray: np.ndarray) -> list[Detection]:
        """Detect frontal faces in one frame.

        Args:
            gray: (H, W) uint8 grayscale frame.

        Returns:
            Detections with boxes in ``gray``'s pixels, highest score first.

        Raises:
            ValueError: when ``gray`` is not a 2-D uint8 array.
        """
        h, w = _gray_shape(gray)
        if min(h, w) < _WINDOW:
            return []  # smaller than the cascade window: nothing can be found
        longest = max(h, w)
        small = gray
        if longest > self.max_side:
            f = self.max_side / longest
            size = (max(_WINDOW, round(w * f)), max(_WINDOW, round(h * f)))
            small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        sh, sw = small.shape
        sx, sy = w / sw, h / sh
        m = max(1, int(round(self.min_face_frac * min(sh, sw))))
        rects, weights = self._cascade_rects(small, m)
        out = [
            Detection(
                box=(float(x * sx), float(y * sy), float((x + bw) * sx), float((y + bh) * sy)),
                score=float(s),
            )
            for (x, y, bw, bh), s in zip(rects, weights, strict=True)
        ]
        return sorted(out, key=lambda d: -d.score)

    def detect_near(self, gray: np.ndarray, boxes: list[Box]) -> list[Detection]:
        """Faces near known ones, at their scale: the cheap detection between whole-frame passes.

        Each box is widened by :data:`NEAR_REACH` of its side on every side; overlapping
        neighbourhoods are merged, so a face is searched once. A neighbourhood is shrunk by
        a whole factor until its faces are at most ``2 * NEAR_FACE_PX`` pixels, and searched
        for faces from ``NEAR_MIN_SCALE`` of its smallest box to ``NEAR_MAX_SCALE`` of its
        largest (never below :attr:`min_face_frac` of the frame). Each box keeps the one
        detection that overlaps it most, if any: this re-finds tracked faces, it does not
        discover faces (on a 720p real clip the other hits near a face, a part of it at
        another scale, started a second track for the same person). The 450 px face of the
        benchmark's 720p clip costs an 84x84 search, 3.3 ms against 10 ms for the whole
        frame; the real clips' faces 4 to 8 ms against 20 to 30 ms (one thread). A face
        away from every box is not found here: the caller scans the whole frame for those.

        ``gray``, the result and the errors are as for :meth:`detect`; ``boxes`` are
        ``(x0, y0, x1, y1)`` in ``gray``'s pixels (e.g. the live tracks').
        """
        h, w = _gray_shape(gray)
        smallest = self.min_face_frac * min(h, w)
        out: list[Detection] = []
        for (x0, y0, x1, y1), lo, hi in _neighbourhoods(boxes, w, h, NEAR_REACH):
            k = max(1, int(lo // NEAR_FACE_PX))
            # Whole multiples of k, so INTER_AREA averages k x k blocks exactly.
            x1, y1 = x0 + (x1 - x0) // k * k, y0 + (y1 - y0) // k * k
            if min(x1 - x0, y1 - y0) < _WINDOW * k:
                continue
            region = gray[y0:y1, x0:x1]
            small = region if k == 1 else cv2.resize(region, ((x1 - x0) // k, (y1 - y0) // k),
                                                     interpolation=cv2.INTER_AREA)
            least = max(_WINDOW, int(max(NEAR_MIN_SCALE * lo, smallest) / k))
            most = max(least, int(np.ceil(NEAR_MAX_SCALE * hi / k)))
            rects, weights = self._cascade_rects(small, least, most)
            out.extend(
                Detection(box=(float(x0 + x * k), float(y0 + y * k), float(x0 + (x + bw) * k),
                               float(y0 + (y + bh) * k)), score=float(s))
                for (x, y, bw, bh), s in zip(rects, weights, strict=True)
            )
        kept: list[Detection] = []
        for b in boxes:
            best = max(out, key=lambda d: iou(d.box, b), default=None)
            if best is not None and iou(best.box, b) > 0 and best not in kept:
                kept.append(best)
        return sorted(kept, key=lambda d: -d.score)


def _gray_shape(gray: np.ndarray) -> tuple[int, int]:
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 gray frame, got {gray.shape} {gray.dtype}")
    return gray.shape


def _neighbourhoods(boxes: list[Box], width: int, height: int, reach: float) -> list[tuple[IntBox, float, float]]:
    """Each box widened by ``reach`` of its side and clipped to the frame, overlapping ones
    merged (their bounding box); with the smallest and largest side of the boxes in each."""
    merged: list[tuple[IntBox, float, float]] = []
    for b in boxes:
        side = max(b[2] - b[0], b[3] - b[1])
        if side <= 0:
            continue
        pad = reach * side
        r = (max(0, int(b[0] - pad)), max(0, int(b[1] - pad)),
             min(width, int(np.ceil(b[2] + pad))), min(height, int(np.ceil(b[3] + pad))))
        if r[2] <= r[0] or r[3] <= r[1]:
            continue
        lo = hi = side
        # Absorb every region this one overlaps (its union may reach further ones), so the
        # regions kept stay disjoint.
        while (hit := next((m for m in merged if iou(m[0], r) > 0), None)) is not None:
            merged.remove(hit)
            (c, clo, chi) = hit
            r = (min(r[0], c[0]), min(r[1], c[1]), max(r[2], c[2]), max(r[3], c[3]))
            lo, hi = min(lo, clo), max(hi, chi)
        merged.append((r, lo, hi))
    return merged


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when disjoint)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class TrackedFace:
    """A track's state in one frame.

    Attributes:
        track_id: stable id of the person within one video (0, 1, ... in order of appearance).
        box: smoothed ``(x0, y0, x1, y1)`` in full-frame pixels.
        detected: False when the box is coasted from an earlier detection.
    """

    track_id: int
    box: Box
    detected: bool


@dataclass
class _Track:
    track_id: int
    box: Box  # smoothed, what is reported
    last_det: Box  # the latest raw detection, what new detections are matched against
    first_frame: int
    last_frame: int
    missed: int = 0
    n_frames: int = 0
    n_detected: int = 0
    size_sum: float = 0.0  # sum of sqrt(w*h) over detections, for mean_size


class FaceTracker:
    """IoU tracker that keeps one track per person across sampled frames.

    Detections are matched to live tracks by Hungarian assignment on IoU (optimal when
    faces are close, where greedy matching can swap them). A track that gets no match is
    coasted with its last box for up to ``max_missed`` frames, because Haar misses a
    face now and then (blinks, motion blur, roll) and a new id for the same person would
    split their frames. Boxes are smoothed with an exponential moving average so crops do
    not jitter from frame to frame.

    Frame numbers are update-call indices (0, 1, ...), i.e. sampled frames, not the
    video's frame numbers.

    Args:
        iou_threshold: least IoU between a detection and a track's last detection to match.
        max_missed: frames a track may coast without a detection before it ends.
        smooth: weight of the previous box in the average (0 = raw detections).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 4, smooth: float = 0.5):
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {smooth}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {max_missed}")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.smooth = float(smooth)
        self._frame = -1
        self._next_id = 0
        self._live: list[_Track] = []
        self._ended: list[_Track] = []

    def update(self, detections: list[Detection] | None) -> list[TrackedFace]:
        """Advance one frame.

        Args:
            detections: this frame's detections (any order), or ``None`` when the
                detector did not run on this frame: live tracks then coast without
                counting a miss (detection every n-th frame).

        Returns:
            Every live track's face in this frame, detected or coasted, by track id.
        """
        self._frame += 1
        frame = self._frame
        ran = detections is not None
        boxes = [tuple(float(v) for v in d.box) for d in detections or ()]
        matched_tracks: dict[int, int] = {}  # index in self._live -> detection index
        if self._live and boxes:
            cost = np.array([[1.0 - iou(t.last_det, b) for b in boxes] for t in self._live])
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols, strict=True):
                if 1.0 - cost[r, c] >= self.iou_threshold:
                    matched_tracks[int(r)] = int(c)
        used = set(matched_tracks.values())

        out: list[TrackedFace] = []
        still_live: list[_Track] = []
        for i, t in enumerate(self._live):
            if i in matched_tracks:
                b = boxes[matched_tracks[i]]
                a = self.smooth
                t.box = tuple(a * p + (1.0 - a) * q for p, q in zip(t.box, b, strict=True))
                t.last_det = b
                t.missed = 0
                t.n_detected += 1
                t.size_sum += float(np.sqrt(max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)))
                detected = True
            else:
                t.missed += ran
                if t.missed > self.max_missed:
                    self._ended.append(t)
                    continue
                detected = False
            t.n_frames += 1
            t.last_frame = frame
            still_live.append(t)
            out.append(TrackedFace(t.track_id, t.box, detected))
        for j, b in enumerate(boxes):
            if j in used:
                continue
            size = float(np.sqrt(max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)))
            t = _Track(self._next_id, b, b, frame, frame, n_frames=1, n_detected=1, size_sum=size)
            self._next_id += 1
            still_live.append(t)
            out.append(TrackedFace(t.track_id, t.box, True))
        self._live = still_live
        return sorted(out, key=lambda f: f.track_id)

    def boxes(self) -> list[Box]:
        """The live tracks' current boxes (where the next frame's faces are looked for)."""
        return [t.box for t in self._live]

    def shift(self, track_id: int, dx: float, dy: float) -> None:
        """Move a live track's box by ``(dx, dy)`` pixels (e.g. by the face's optical flow
        while it coasts between detections), so the next crop and match follow the face."""
        for t in self._live:
            if t.track_id == track_id:
                t.box = (t.box[0] + dx, t.box[1] + dy, t.box[2] + dx, t.box[3] + dy)
                t.last_det = (t.last_det[0] + dx, t.last_det[1] + dy, t.last_det[2] + dx, t.last_det[3] + dy)
                return

    def summary(self) -> list[dict]:
        """Per-track statistics, ended and live tracks alike.

        Returns:
            One dict per track, by id: ``track_id``, ``n_frames`` (frames reported,
            coasted included), ``n_detected``, ``first_frame``, ``last_frame`` (last
            frame reported) and ``mean_size`` (mean sqrt(w*h) of its detections, px).
        """
        tracks = sorted(self._ended + self._live, key=lambda t: t.track_id)
        return [
            {
                "track_id": t.track_id,
                "n_frames": t.n_frames,
                "n_detected": t.n_detected,
                "first_frame": t.first_frame,
                "last_frame": t.last_frame,
                "mean_size": t.size_sum / max(t.n_detected, 1),
            }
            for t in tracks
        ]


def square_box(box: Box, margin: float, frame_w: int, frame_h: int) -> IntBox:
    """A square around a face box's centre, for a crop that keeps the face centred.

    The square may extend beyond the frame (:func:`crop_resize` then pads by edge
    replication): clamping it inside would push the face off-centre near the borders.

    Args:
        box: ``(x0, y0, x1, y1)`` face box.
        margin: extra context; the side is ``max(w, h) * (1 + margin)``.
        frame_w: frame width; with ``frame_h`` it only caps the side at the frame's longer
            side, so a crop is never mostly padding.
        frame_h: frame height.

    Returns:
        Integer ``(x0, y0, x1, y1)`` with ``x1 - x0 == y1 - y0 >= 1``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(x1 - x0, y1 - y0) * (1.0 + margin)
    side = int(round(min(side, max(frame_w, frame_h))))
    side = max(side, 1)
    bx = int(np.floor(cx - side / 2.0 + 0.5))
    by = int(np.floor(cy - side / 2.0 + 0.5))
    return bx, by, bx + side, by + side


def center_box(frame_w: int, frame_h: int, frac: float = 0.6) -> IntBox:
    """The centred square used when no face is known.

    Args:
        frame_w: frame width.
        frame_h: frame height.
        frac: side as a fraction of the frame's shorter side.

    Returns:
        Integer ``(x0, y0, x1, y1)`` square centred in the frame.
    """
    side = max(1, int(round(frac * min(frame_w, frame_h))))
    x0 = (frame_w - side) // 2
    y0 = (frame_h - side) // 2
    return x0, y0, x0 + side, y0 + side


def crop_resize(rgb: np.ndarray, box: Box | IntBox, size: int) -> np.ndarray:
    """Cut a box out of a frame and resize it to ``size`` x ``size``.

    Parts of the box outside the frame are filled by replicating the nearest edge pixel
    (as ``cv2.BORDER_REPLICATE``): constant padding would add a sharp artificial border
    that a detector could learn.

    Args:
        rgb: (H, W, C) or (H, W) uint8 frame.
        box: ``(x0, y0, x1, y1)``; floats are rounded; may extend beyond the frame.
        size: output side in pixels.

    Returns:
        (size, size, C) or (size, size) uint8 crop.

    Raises:
        ValueError: for an empty box or a non-positive size.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty box {box}")
    h, w = rgb.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if (ix0, iy0, ix1, iy1) == (x0, y0, x1, y1):
        crop = rgb[y0:y1, x0:x1]
    elif ix1 > ix0 and iy1 > iy0 and (rgb.ndim == 2 or rgb.shape[2] <= 4):
        # copyMakeBorder is ~4x faster than gathering with index arrays on big crops.
        crop = cv2.copyMakeBorder(
            np.ascontiguousarray(rgb[iy0:iy1, ix0:ix1]),
            iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1, cv2.BORDER_REPLICATE,
        )
    else:
        # Clipped index arrays replicate edges, and also work for a box wholly outside.
        ys = np.clip(np.arange(y0, y1), 0, h - 1)
        xs = np.clip(np.arange(x0, x1), 0, w - 1)
        crop = rgb[ys[:, None], xs[None, :]]
    ch, cw = crop.shape[:2]
    if (ch, cw) == (size, size):
        return np.ascontiguousarray(crop, dtype=np.uint8)
    # INTER_AREA averages when shrinking (no aliasing); it degrades to blocky when enlarging.
    interp = cv2.INTER_AREA if max(ch, cw) > size else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)
    return out.astype(np.uint8, copy=False)
