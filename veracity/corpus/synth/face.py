"""Drawing talking heads: backgrounds, head pose, blinks and a mouth that speaks.

Heads are drawn with OpenCV primitives at twice the output size and downscaled, which
anti-aliases edges like a camera would. Coordinates are in "face units" (face
half-height = 1, origin at the face centre) mapped to pixels by the head pose, so the
same expression can be drawn for a different identity in exactly the same pose, which
is what the face-swap family needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from veracity.corpus.synth.identity import Identity

SS = 2  # supersampling factor


@dataclass(frozen=True)
class Pose:
    """Where the head is in the frame: centre (px), face half-height (px), roll (deg)."""

    cx: float
    cy: float
    scale: float
    roll: float


@dataclass(frozen=True)
class Expression:
    """What the face is doing: mouth opening, eye opening, brow raise and gaze, in [0, 1]."""

    mouth: float
    eyes: float
    brows: float = 0.0
    gaze: float = 0.0
    teeth: bool = True


class _Canvas:
    """Maps face units to supersampled pixel coordinates for one pose."""

    def __init__(self, pose: Pose):
        self.pose = pose
        r = np.deg2rad(pose.roll)
        self.c, self.s = np.cos(r), np.sin(r)

    def pt(self, x: float, y: float) -> tuple[int, int]:
        sc = self.pose.scale * SS
        px = self.pose.cx * SS + sc * (x * self.c - y * self.s)
        py = self.pose.cy * SS + sc * (x * self.s + y * self.c)
        return int(round(px * 16)), int(round(py * 16))  # 4 fractional bits for cv2 shift

    def ax(self, a: float, b: float) -> tuple[int, int]:
        sc = self.pose.scale * SS * 16
        return max(1, int(round(a * sc))), max(1, int(round(b * sc)))

    def width(self, w: float) -> int:
        return max(1, int(round(w * self.pose.scale * SS)))

    def ellipse(self, img, x, y, a, b, color, angle=0.0, start=0, end=360, thick=-1) -> None:
        cv2.ellipse(img, self.pt(x, y), self.ax(a, b), self.pose.roll + angle, start, end,
                    _c(color), thick if thick < 0 else self.width(thick), cv2.LINE_AA, 4)

    def poly(self, img, pts, color, closed=True, thick=-1) -> None:
        arr = np.array([self.pt(x, y) for x, y in pts], dtype=np.int32)[None]
        if thick < 0:
            cv2.fillPoly(img, arr, _c(color), cv2.LINE_AA, 4)
        else:
            cv2.polylines(img, arr, closed, _c(color), self.width(thick), cv2.LINE_AA, 4)


def _c(color) -> tuple[float, float, float]:
    return (float(color[0]), float(color[1]), float(color[2]))


def _shade(color, f: float):
    return tuple(np.clip(np.array(color) * f, 0, 255))


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random room-like backdrop: a two-colour gradient with a few blurred objects."""
    c1, c2 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0 : h * SS, 0 : w * SS] / (SS * max(h, w))
    t = np.clip(np.cos(ang) * xx + np.sin(ang) * yy, 0, 1)[..., None]
    img = (c1 * (1 - t) + c2 * t).astype(np.float32)
    for _ in range(int(rng.integers(2, 7))):
        col = tuple(float(v) for v in rng.uniform(5, 250, 3))
        x, y = int(rng.uniform(0, w * SS)), int(rng.uniform(0, h * SS))
        if rng.random() < 0.5:
            dx, dy = int(rng.uniform(8, w * SS / 2)), int(rng.uniform(8, h * SS / 2))
            cv2.rectangle(img, (x, y), (x + dx, y + dy), col, -1)
        else:
            cv2.circle(img, (x, y), int(rng.uniform(6, w * SS / 4)), col, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), SS * 1.2)


def skin_texture(identity: Identity, size: int = 128) -> np.ndarray:
    """Static per-identity skin detail (pores, blotches) in face units, zero mean."""
    rng = np.random.default_rng(identity.texture_seed)
    fine = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.7)
    blotch = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 4.0)
    tex = fine / (fine.std() + 1e-6) + 0.3 * blotch / (blotch.std() + 1e-6)
    return (tex * identity.texture_amp / 1.2).astype(np.float32)


def draw_head(img: np.ndarray, ident: Identity, pose: Pose, expr: Expression, texture: np.ndarray) -> None:
    """Draw shoulders, hair, face and features of ``ident`` onto a supersampled canvas."""
    cv = _Canvas(pose)
    a = ident.face_aspect
    skin = ident.skin
    cv.ellipse(img, 0, 2.05, 2.3 * a, 0.8, ident.clothes)  # shoulders
    cv.poly(img, [(-0.34 * a, 0.6), (0.34 * a, 0.6), (0.38 * a, 1.5), (-0.38 * a, 1.5)], _shade(skin, 0.82))
    hv = ident.hair_volume
    cv.ellipse(img, 0, -0.3, 1.13 * a * hv, 0.88 * hv, ident.hair)
    cv.ellipse(img, -a, 0.05, 0.12, 0.2, _shade(skin, 0.9))  # ears
    cv.ellipse(img, a, 0.05, 0.12, 0.2, _shade(skin, 0.9))
    cv.ellipse(img, 0, 0, a, 1.0, _shade(skin, 0.9))
    cv.ellipse(img, 0, -0.02, a * 0.93, 0.95, skin)
    _apply_texture(img, cv, a, texture)
    cv.ellipse(img, 0, -0.72, a * 0.95, 0.32, ident.hair, start=180, end=360)  # fringe
    draw_features(img, ident, pose, expr)


def draw_features(img: np.ndarray, ident: Identity, pose: Pose, expr: Expression) -> None:
    """Draw brows, eyes, nose and mouth (the inner face) for one pose and expression."""
    cv = _Canvas(pose)
    a = ident.face_aspect
    skin = ident.skin
    brow_y = -0.34 - ident.brow_lift - 0.05 * expr.brows
    # Brows and eye sockets are kept darker than the skin whatever the hair colour: that
    # dark band above bright cheeks is what frontal face detectors key on.
    brow_col = tuple(np.minimum(np.array(ident.hair) * 0.6, np.array(skin) * 0.42))
    for side in (-1, 1):
        ex = side * ident.eye_dx * a
        cv.poly(img, [(ex - 0.2 * a, brow_y + 0.03), (ex, brow_y - 0.03), (ex + 0.2 * a, brow_y + 0.02)],
                brow_col, closed=False, thick=0.055 * ident.brow_thickness)
        es = ident.eye_size
        cv.ellipse(img, ex, -0.13, 0.2 * a * es, 0.1 * es, _shade(skin, 0.62))  # eye socket shadow
        open_ = max(expr.eyes, 0.0)
        if open_ > 0.15:
            cv.ellipse(img, ex, -0.13, 0.16 * a * es, 0.075 * es * open_, (236, 236, 230))
            gx = ex + 0.05 * a * expr.gaze
            cv.ellipse(img, gx, -0.13, 0.065 * es, 0.065 * es * min(1.0, open_ * 1.3), ident.iris)
            cv.ellipse(img, gx, -0.13, 0.03 * es, 0.03 * es * min(1.0, open_ * 1.3), (10, 10, 10))
        cv.ellipse(img, ex, -0.13, 0.17 * a * es, 0.08 * es, _shade(skin, 0.45), start=180, end=360, thick=0.02)
        if open_ <= 0.15:
            cv.ellipse(img, ex, -0.12, 0.16 * a * es, 0.03, _shade(skin, 0.5), start=0, end=180, thick=0.02)
    nl = ident.nose_length
    cv.poly(img, [(-0.02, -0.08), (-0.07, 0.2 * nl), (0.07, 0.2 * nl), (0.02, -0.08)], _shade(skin, 1.06))
    cv.poly(img, [(0.03, -0.06), (0.08, 0.2 * nl)], _shade(skin, 0.72), closed=False, thick=0.025)
    for side in (-1, 1):
        cv.ellipse(img, side * 0.06, 0.24 * nl, 0.035, 0.02, _shade(skin, 0.45))
    mw = ident.mouth_width * a
    m = float(np.clip(expr.mouth, 0, 1))
    my = 0.52
    cv.ellipse(img, 0, my, mw, 0.05 + 0.17 * m, ident.lips)
    if m > 0.04:
        cv.ellipse(img, 0, my, mw * 0.84, 0.012 + 0.15 * m, (70, 20, 25))
        if expr.teeth and m > 0.25:
            cv.ellipse(img, 0, my - 0.015 - 0.09 * m, mw * 0.7, 0.035, (230, 228, 215), start=0, end=180)
    else:
        cv.poly(img, [(-mw * 0.9, my), (mw * 0.9, my)], _shade(ident.lips, 0.55), closed=False, thick=0.018)


def _apply_texture(img: np.ndarray, cv: _Canvas, a: float, texture: np.ndarray) -> None:
    # Texture spans [-1, 1] face units; map it through the same similarity transform.
    size = texture.shape[0]
    sc = cv.pose.scale * SS
    m = np.array([[sc * cv.c, -sc * cv.s], [sc * cv.s, sc * cv.c]]) * (2.0 / size)
    off = np.array([cv.pose.cx * SS, cv.pose.cy * SS]) - m @ np.array([size / 2, size / 2])
    warp = np.hstack([m, off[:, None]]).astype(np.float32)
    h, w = img.shape[:2]
    tex = cv2.warpAffine(texture, warp, (w, h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, cv.pt(0, -0.02), cv.ax(a * 0.93, 0.95), cv.pose.roll, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    img += (tex * mask)[..., None]


def region_mask(shape: tuple[int, int], pose: Pose, ident: Identity, region: str, feather: float) -> np.ndarray:
    """A soft mask (float32, [0, 1], output resolution) over a face region.

    ``region`` is 'inner' (brows to chin: what a face swap replaces) or 'mouth'.
    ``feather`` is the blur sigma in pixels: small values leave visible seams.
    """
    h, w = shape
    small = Pose(pose.cx / SS, pose.cy / SS, pose.scale / SS, pose.roll)
    cv = _Canvas(small)
    mask = np.zeros((h, w), np.float32)
    a = ident.face_aspect
    if region == "inner":
        cv.ellipse(mask, 0, 0.12, a * 0.82, 0.78, (1.0, 1.0, 1.0))
    elif region == "mouth":
        cv.ellipse(mask, 0, 0.52, ident.mouth_width * a * 1.45, 0.3, (1.0, 1.0, 1.0))
    else:
        raise ValueError(f"unknown region {region!r}")
    if feather > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), feather)
    return mask


def downsample(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Supersampled float canvas -> output-size float image (area filter)."""
    return cv2.resize(img, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_AREA)
