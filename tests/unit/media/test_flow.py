"""Farneback optical flow between face crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from veracity.media.flow import FlowStream, farneback, flow_sequence


def _texture(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 1.5)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def _moving_crops(n: int = 6, size: int = 64, step=(2, 1)) -> np.ndarray:
    """RGB crops of a texture moving by ``step`` = (dx, dy) pixels per frame."""
    base = _texture(size + 4 * n)
    out = []
    for i in range(n):
        x, y = 2 * n - step[0] * i, 2 * n - step[1] * i  # the window moves against the content
        g = base[y : y + size, x : x + size]
        out.append(np.dstack([g, g, g]))
    return np.stack(out)


def test_shift_gives_flow_of_the_shift():
    img = _texture()
    moved = np.roll(img, (1, 2), axis=(0, 1))  # content moves dx=2 right, dy=1 down
    f = farneback(img[16:80, 16:80], moved[16:80, 16:80])
    assert f.shape == (64, 64, 2) and f.dtype == np.float32
    med = np.median(f[8:-8, 8:-8].reshape(-1, 2), axis=0)
    assert med == pytest.approx([2.0, 1.0], abs=0.1)


def test_identical_frames_give_no_flow():
    img = _texture()
    f = farneback(img, img)
    assert np.abs(f).mean() < 0.01
    # Farneback's border extrapolation leaves a few hundredths of a pixel at the edges only.
    assert np.abs(f[8:-8, 8:-8]).max() < 0.01


def test_flow_sequence_shape_dtype_and_motion():
    crops = _moving_crops()
    flows = flow_sequence(crops)
    assert flows.shape == (5, 64, 64, 2) and flows.dtype == np.float16
    med = np.median(flows[:, 8:-8, 8:-8].astype(np.float32).reshape(-1, 2), axis=0)
    assert med == pytest.approx([2.0, 1.0], abs=0.1)
    assert flow_sequence(crops[:1]).shape == (0, 64, 64, 2)
    assert flow_sequence(crops[:0]).shape == (0, 64, 64, 2)
    assert flow_sequence(crops[..., 0]).shape == (5, 64, 64, 2)  # gray crops too


def test_flow_stream_equals_flow_sequence():
    crops = _moving_crops()
    stream = FlowStream()
    pushed = [stream.push(c) for c in crops]
    assert pushed[0] is None
    assert np.array_equal(np.stack(pushed[1:]), flow_sequence(crops))
    stream.reset()
    assert stream.push(crops[0]) is None


def test_flow_parameters_are_passed_through():
    crops = _moving_crops()
    a = flow_sequence(crops, winsize=15)
    b = flow_sequence(crops)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_rejects_mismatched_images():
    with pytest.raises(ValueError):
        farneback(np.zeros((8, 8), np.uint8), np.zeros((8, 9), np.uint8))
    with pytest.raises(ValueError):
        FlowStream().push(np.zeros((8, 8, 4), np.uint8))
