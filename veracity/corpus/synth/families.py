"""Rendering one clip of each manipulation family.

=========  =============================================  ===========  ===========
method     what is manipulated                            video_label  audio_label
=========  =============================================  ===========  ===========
real       nothing                                        0            0
faceswap   inner face replaced by a donor's (seams,       1            0
           colour mismatch, resolution loss)
reenact    mouth/expression driven by another person's    1            0
           clip (re-rendered mouth, no teeth, jitter);
           audio is the driver's real speech, in sync
neural     inner face re-synthesised through down/up-     1            0
           sampling (texture loss, as NeuralTextures)
lipsync    mouth driven by another utterance of the same  1            0
           person; each modality alone is real
voice      real video; voice replaced by a vocoder        0            1
           re-synthesis (same person or another)
av         faceswap or neural video + vocoded voice       1            1
=========  =============================================  ===========  ===========

Everything a classifier could use without looking at the face or listening closely is
drawn from the same distributions for every family: durations, backgrounds, lighting,
head motion, blinks, compression, grain and loudness.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from veracity.corpus.synth import face, speech
from veracity.corpus.synth.identity import Identity

LABELS = {
    "real": (0, 0),
    "faceswap": (1, 0),
    "reenact": (1, 0),
    "neural": (1, 0),
    "lipsync": (1, 0),
    "voice": (0, 1),
    "av": (1, 1),
}


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip deterministically."""

    video_id: str
    method: str
    identity: Identity
    other: Identity | None  # donor (faceswap/av), driver (reenact) or target voice (voice/av)
    duration: float
    fps: int
    width: int
    height: int
    sample_rate: int
    crf: int
    grain: float
    seed: int


@dataclass
class RenderedClip:
    """Frames are produced lazily so memory stays flat for long or large clips."""

    frames: Iterator[np.ndarray]
    audio: np.ndarray
    n_frames: int


def _smooth_noise(n: int, fps: int, rng: np.random.Generator, period: tuple[float, float]) -> np.ndarray:
    t = np.arange(n) / fps
    out = np.zeros(n)
    for _ in range(3):
        f = 1.0 / rng.uniform(*period)
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return out / 2.0


def head_poses(n: int, fps: int, width: int, height: int, rng: np.random.Generator) -> list[face.Pose]:
    """Smooth head motion: drift, nods, small roll and distance changes."""
    base_x = width / 2 + rng.uniform(-0.06, 0.06) * width
    base_y = height * rng.uniform(0.44, 0.50)
    base_s = height * rng.uniform(0.27, 0.31)
    dx = _smooth_noise(n, fps, rng, (1.5, 5.0)) * width * 0.03
    dy = _smooth_noise(n, fps, rng, (1.0, 4.0)) * height * 0.02
    ds = 1 + _smooth_noise(n, fps, rng, (2.0, 6.0)) * 0.03
    roll = _smooth_noise(n, fps, rng, (2.0, 6.0)) * 5.0
    return [face.Pose(base_x + dx[i], base_y + dy[i], base_s * ds[i], roll[i]) for i in range(n)]


def eye_track(n: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """Eye opening per frame with blinks every 1.5-4.5 s lasting ~120-160 ms."""
    eyes = np.ones(n, dtype=np.float32)
    t = rng.uniform(0.2, 2.5)
    profile = np.array([0.5, 0.0, 0.0, 0.5])
    while t < n / fps:
        i = int(t * fps)
        k = min(len(profile), n - i)
        eyes[i : i + k] = np.minimum(eyes[i : i + k], profile[:k])
        t += rng.uniform(1.5, 4.5)
    return eyes


def render(spec: ClipSpec) -> RenderedClip:
    """Render one clip of ``spec.method`` (see the module table)."""
    ident, other = spec.identity, spec.other
    method = spec.method
    if method not in LABELS:
        raise ValueError(f"unknown method {method!r}")
    if method in ("faceswap", "reenact", "av") and other is None:
        raise ValueError(f"{spec.video_id}: method {method!r} needs a second identity")
    rng = np.random.default_rng(spec.seed)
    n = int(round(spec.duration * spec.fps))
    sr = spec.sample_rate

    # Audio and the mouth it implies.
    heard = speech.plan_utterance(spec.duration, rng)
    speaker = other if method == "reenact" else ident
    audio = speech.synthesize(heard, spec.duration, speaker, rng, sr)
    mouth = speech.mouth_track(heard, spec.duration, spec.fps, rng)
    if method == "lipsync":
        # The lips say something else that the same person could have said.
        seen = speech.plan_utterance(spec.duration, rng)
        mouth = speech.mouth_track(seen, spec.duration, spec.fps, rng)
    if method in ("voice", "av"):
        voice = other if other is not None and (method == "voice" or rng.random() < 0.7) else ident
        converted = speech.synthesize(heard, spec.duration, voice, rng, sr)
        audio = speech.vocode(converted, rng, sr)
    audio = speech.finish(audio, rng, target_rms=float(rng.uniform(0.05, 0.12)))

    poses = head_poses(n, spec.fps, spec.width, spec.height, rng)
    eyes = eye_track(n, spec.fps, rng)
    brows = np.clip(_smooth_noise(n, spec.fps, rng, (1.0, 3.0)) * 0.5 + 0.3 * mouth, 0, 1)
    gaze = _smooth_noise(n, spec.fps, rng, (2.0, 5.0)) * 0.6
    bg = face.background(spec.height, spec.width, rng)
    texture = face.skin_texture(ident)

    video_method = method
    if method == "av":
        video_method = "faceswap" if rng.random() < 0.5 else "neural"
    if video_method == "faceswap":
        # A swap maps the donor's features into the target's face shape and hair.
        donor = dataclasses.replace(other, face_aspect=ident.face_aspect, hair=ident.hair,
                                    hair_volume=ident.hair_volume)
        donor_tex = face.skin_texture(other)
        swap = {
            "scale": float(rng.uniform(1.4, 2.2)),
            "correct": float(rng.uniform(0.3, 0.85)),
            "feather": float(rng.uniform(0.5, 1.8)),
            "jitter": float(rng.uniform(0.2, 0.9)),
        }
    neural_f = float(rng.uniform(1.5, 2.2))
    reenact = {"blur": float(rng.uniform(0.7, 1.3)), "jitter": float(rng.uniform(0.3, 1.0))}
    # Capture conditions vary per clip and not per family: lens softness and sensor grain
    # move the histogram tails as much as any blur a manipulation leaves in the face.
    softness = float(rng.uniform(0.0, 1.2))
    grain = spec.grain * float(rng.uniform(0.5, 1.5))
    light = {
        "gain": rng.uniform(0.8, 1.15),
        "tint": rng.uniform(0.94, 1.06, 3),
        "offset": rng.uniform(-10, 10),
    }
    hw = (spec.height, spec.width)
    frame_rng = np.random.default_rng(rng.integers(2**63))

    def frames() -> Iterator[np.ndarray]:
        for i in range(n):
            expr = face.Expression(mouth=float(mouth[i]), eyes=float(eyes[i]), brows=float(brows[i]),
                                   gaze=float(gaze[i]))
            canvas = bg.copy()
            face.draw_head(canvas, ident, poses[i], expr, texture)
            img = face.downsample(canvas, hw)
            if video_method == "faceswap":
                img = _faceswap(img, bg, donor, donor_tex, ident, poses[i], expr, swap, frame_rng)
            elif video_method == "neural":
                img = _neural(img, ident, poses[i], neural_f, frame_rng)
            elif video_method == "reenact":
                img = _reenact(img, bg, ident, poses[i], expr, texture, reenact, frame_rng)
            if softness > 0.05:
                img = cv2.GaussianBlur(img, (0, 0), softness)
            img = img * light["gain"] * light["tint"] + light["offset"]
            img = img + frame_rng.normal(0.0, grain, img.shape)
            yield np.clip(img + 0.5, 0, 255).astype(np.uint8)

    return RenderedClip(frames=frames(), audio=audio, n_frames=n)


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


def _resample(img: np.ndarray, factor: float) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(2, int(w / factor)), max(2, int(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _blend(base: np.ndarray, layer: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return base * (1 - mask[..., None]) + layer * mask[..., None]


def _faceswap(img, bg, donor, donor_tex, target, pose, expr, p, rng) -> np.ndarray:
    canvas = bg.copy()
    face.draw_head(canvas, donor, pose, expr, donor_tex)
    layer = _resample(face.downsample(canvas, img.shape[:2]), p["scale"])
    # Partial colour transfer towards the target's skin: real swaps rarely match exactly.
    layer = layer + p["correct"] * (np.array(target.skin) - np.array(donor.skin))
    layer = _shift(layer, *(rng.normal(0, p["jitter"], 2)))
    mask = face.region_mask(img.shape[:2], pose, target, "inner", p["feather"])
    return _blend(img, layer, mask)


def _neural(img, ident, pose, factor, rng) -> np.ndarray:
    layer = _resample(img, factor) + rng.normal(0, 1.5, 3)
    mask = face.region_mask(img.shape[:2], pose, ident, "inner", 1.5)
    return _blend(img, layer, mask)


def _reenact(img, bg, ident, pose, expr, texture, p, rng) -> np.ndarray:
    # The mouth is re-rendered by the reenactment model: smoother and without teeth.
    canvas = bg.copy()
    face.draw_head(canvas, ident, pose, dataclasses.replace(expr, teeth=False), texture)
    layer = cv2.GaussianBlur(face.downsample(canvas, img.shape[:2]), (0, 0), p["blur"])
    layer = _shift(layer, *(rng.normal(0, p["jitter"], 2)))
    mask = face.region_mask(img.shape[:2], pose, ident, "mouth", 1.2)
    return _blend(img, layer, mask)
