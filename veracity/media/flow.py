"""Dense optical flow between consecutive face crops (the motion input of the temporal model).

Farneback's polynomial-expansion flow (G. Farneback, "Two-frame motion estimation based
on polynomial expansion", SCIA 2003) runs on CPU in about a millisecond per small crop and
needs no weights, so it suits an offline pipeline. Flow is computed on the crops, not on
the full frames: it is then already aligned with the face the video model sees, and the
head's global motion is largely removed by the tracker's box, leaving the local motion
(mouth, eyes, blending seams) where manipulations show.

Flow ``f`` at pixel ``(y, x)`` is ``(dx, dy)`` with ``prev[y, x] ~ next[y + dy, x + dx]``.
"""

from __future__ import annotations

import cv2
import numpy as np


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(img, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    raise ValueError(f"expected a (H, W) gray or (H, W, 3) RGB image, got shape {img.shape}")


def farneback(
    prev_gray: np.ndarray,
    next_gray: np.ndarray,
    pyr_scale: float = 0.5,
    levels: int = 3,
    winsize: int = 9,
    iterations: int = 3,
    poly_n: int = 5,
    poly_sigma: float = 1.1,
) -> np.ndarray:
    """Dense flow from one grayscale image to the next.

    The defaults suit 64-224 px face crops: a 9 px window keeps the flow local (lips,
    eyelids) and three pyramid levels still follow a few pixels of head motion.

    Args:
        prev_gray: (H, W) uint8 earlier image.
        next_gray: (H, W) uint8 later image of the same shape.
        pyr_scale: pyramid scale between levels (< 1).
        levels: pyramid levels, the original included.
        winsize: averaging window; larger is smoother and more robust to noise.
        iterations: iterations per pyramid level.
        poly_n: neighbourhood of the polynomial expansion (5 or 7).
        poly_sigma: Gaussian sigma of the expansion; 1.1 goes with poly_n=5.

    Returns:
        (H, W, 2) float32 flow ``(dx, dy)`` in pixels.

    Raises:
        ValueError: when the images differ in shape or are not 2-D.
    """
    if prev_gray.shape != next_gray.shape or prev_gray.ndim != 2:
        raise ValueError(f"need two equal (H, W) images, got {prev_gray.shape} and {next_gray.shape}")
    return cv2.calcOpticalFlowFarneback(
        np.ascontiguousarray(prev_gray, dtype=np.uint8),
        np.ascontiguousarray(next_gray, dtype=np.uint8),
        None, pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, 0,
    )


class FlowStream:
    """Flow between consecutive crops, one crop at a time.

    The caller pushes crops as it cuts them and never holds the whole sequence; only the
    previous crop's gray image is kept.

    Args:
        **params: :func:`farneback` parameters.
    """

    def __init__(self, **params):
        self.params = params
        self._prev: np.ndarray | None = None

    def push(self, crop: np.ndarray) -> np.ndarray | None:
        """Add the next crop.

        Args:
            crop: (S, S, 3) uint8 RGB or (S, S) uint8 gray crop.

        Returns:
            (S, S, 2) float16 flow from the previous crop to this one, or None for the
            first crop (float16 halves storage; its ~1e-3 px precision is ample).
        """
        gray = _gray(crop)
        prev, self._prev = self._prev, gray
        if prev is None:
            return None
        return farneback(prev, gray, **self.params).astype(np.float16)

    def reset(self) -> None:
        """Forget the previous crop (e.g. at a track or shot boundary)."""
        self._prev = None


def flow_sequence(crops: np.ndarray, **params) -> np.ndarray:
    """Flow between each pair of consecutive crops.

    Args:
        crops: (T, S, S, 3) uint8 RGB crops (or (T, S, S) gray).
        **params: :func:`farneback` parameters.

    Returns:
        (T - 1, S, S, 2) float16 flows; shape (0, S, S, 2) when T < 2.
    """
    crops = np.asarray(crops)
    if crops.ndim not in (3, 4):
        raise ValueError(f"expected (T, S, S[, 3]) crops, got shape {crops.shape}")
    t, h, w = crops.shape[:3]
    out = np.empty((max(t - 1, 0), h, w, 2), dtype=np.float16)
    stream = FlowStream(**params)
    for i in range(t):
        f = stream.push(crops[i])
        if f is not None:
            out[i - 1] = f
    return out
