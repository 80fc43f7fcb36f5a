"""veracity.robustness: re-encode, crop and audio corruptions, FGSM/PGD and attack_batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch import nn

from veracity import robustness as rb
from veracity.config import ContractConfig
from veracity.media.encode import write_mp4
from veracity.models.base import Batch

FPS, SR, N_FRAMES, SIZE = 25, 16000, 32, 64

# ------------------------------------------------------------------------------ helpers


def _frames(n: int = N_FRAMES, h: int = SIZE, w: int = SIZE) -> list[np.ndarray]:
    """A textured background with a square moving across it (something to compress)."""
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256], -1)
    out = []
    for i in range(n):
        f = background.astype(np.uint8)
        f[10:30, i : i + 20] = (220, 40, 90)
        out.append(f)
    return out


def _tone(freqs: tuple[float, ...], n: int, amp: float = 0.3, sr: int = SR) -> np.ndarray:
    t = np.arange(n) / sr
    return sum(amp * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def _tone_amp(w: np.ndarray, f: float, sr: int = SR) -> float:
    """Amplitude of the component at frequency ``f`` (projection on a complex exponential)."""
    t = np.arange(len(w)) / sr
    return float(2 * np.abs(np.mean(w * np.exp(-2j * np.pi * f * t))))


def _decode_rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reencode") / "src.mp4"
    audio = _tone((440.0,), int(N_FRAMES / FPS * SR))
    return write_mp4(path, _frames(), FPS, audio=audio, sample_rate=SR, crf=10, preset="veryfast")


@pytest.fixture
def crops() -> np.ndarray:
    return np.stack(_frames(4, 48, 40)[:4])  # (4, 48, 40, 3): non-square on purpose


# ---------------------------------------------------------------------------- re-encode


def test_reencode_keeps_frames_size_timestamps_and_audio(clip: Path, tmp_path: Path) -> None:
    out = rb.reencode_video(clip, tmp_path / "sub" / "out.mp4", crf=30)
    assert out == tmp_path / "sub" / "out.mp4" and out.exists()
    assert not list(out.parent.glob("*.part"))
    with av.open(str(clip)) as c:
        src_times = [float(f.time) for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.width, v.height) == ("h264", SIZE, SIZE)
        assert v.codec_context.pix_fmt == "yuv420p"
        assert v.average_rate == FPS
        assert (a.codec_context.name, a.rate, a.channels) == ("aac", SR, 1)
        times = [float(f.time) for f in c.decode(video=0)]
        c.seek(0)
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert times == pytest.approx(src_times)
    assert len(times) == N_FRAMES
    # The tone survives (AAC is lossy, but a 440 Hz sine at 48 kbit/s is easy).
    assert abs(len(audio) - N_FRAMES / FPS * SR) < 2048
    assert _tone_amp(audio[2048:16000], 440.0) == pytest.approx(0.3, abs=0.05)


def test_higher_crf_gives_smaller_file_and_lower_psnr(clip: Path, tmp_path: Path) -> None:
    src = _decode_rgb(clip)
    sizes, psnrs = [], []
    for crf in (12, 30, 45):
        out = rb.reencode_video(clip, tmp_path / f"crf{crf}.mp4", crf=crf)
        sizes.append(out.stat().st_size)
        psnrs.append(_psnr(_decode_rgb(out), src))
    assert sizes[0] > sizes[1] > sizes[2]
    assert psnrs[0] > psnrs[1] > psnrs[2]
    assert psnrs[0] > 35  # a mild CRF is close to the source


def test_reencode_video_only_and_odd_size(tmp_path: Path) -> None:
    # FFV1 in Matroska accepts odd sizes, which H.264 4:2:0 cannot hold.
    src = tmp_path / "odd.mkv"
    frames = _frames(6, 33, 47)
    with av.open(str(src), "w") as c:
        s = c.add_stream("ffv1", rate=10)
        s.width, s.height, s.pix_fmt = 47, 33, "yuv444p"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv444p")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    out = rb.reencode_video(src, tmp_path / "odd.mp4", crf=18)
    with av.open(str(out)) as c:
        assert not c.streams.audio
        v = c.streams.video[0]
        assert (v.width, v.height) == (46, 32)
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(v)])
    assert len(got) == len(frames)
    assert _psnr(got, np.stack(frames)[:, :32, :46]) > 28


@pytest.mark.parametrize("crf", [-1, 52, 2.5, True])
def test_reencode_rejects_bad_crf(clip: Path, tmp_path: Path, crf: object) -> None:
    with pytest.raises(ValueError, match="crf"):
        rb.reencode_video(clip, tmp_path / "x.mp4", crf=crf)  # type: ignore[arg-type]
    assert not (tmp_path / "x.mp4").exists()


# ------------------------------------------------------------------- crop corruptions


@pytest.mark.parametrize("name", sorted(rb.CROP_CORRUPTIONS))
def test_crop_corruptions_keep_shape_dtype_and_are_deterministic(
    name: str, crops: np.ndarray
) -> None:
    strength = {"jpeg": 30, "downscale": 0.5, "noise": 0.05, "blur": 1.5, "brightness": 0.2}[name]
    fn = rb.CROP_CORRUPTIONS[name]
    out = fn(crops, strength, np.random.default_rng(0))
    assert out.shape == crops.shape and out.dtype == np.uint8
    assert not np.array_equal(out, crops)
    np.testing.assert_array_equal(out, fn(crops, strength, np.random.default_rng(0)))
    single = fn(crops[1], strength, np.random.default_rng(0))
    assert single.shape == crops[1].shape and single.dtype == np.uint8
    if name != "noise":  # noise draws for the whole array, so a slice sees other values
        np.testing.assert_array_equal(single, out[1])


@pytest.mark.parametrize(("name", "strength"), [("downscale", 1.0), ("noise", 0.0), ("blur", 0.0), ("brightness", 0.0)])
def test_crop_identity_strengths(name: str, strength: float, crops: np.ndarray) -> None:
    out = rb.CROP_CORRUPTIONS[name](crops, strength, np.random.default_rng(0))
    np.testing.assert_array_equal(out, crops)
    assert out is not crops  # a copy: callers may write into it


@pytest.mark.parametrize(
    ("name", "strengths"),
    [
        ("jpeg", [95, 60, 25, 5]),  # lower quality is stronger
        ("downscale", [0.75, 0.5, 0.25, 0.1]),
        ("noise", [0.01, 0.03, 0.08, 0.2]),
        ("blur", [0.5, 1.0, 2.0, 4.0]),
        ("brightness", [0.05, 0.1, 0.2, 0.4]),
    ],
)
def test_crop_damage_grows_with_strength(name: str, strengths: list[float], crops: np.ndarray) -> None:
    fn = rb.CROP_CORRUPTIONS[name]
    mses = [_mse(fn(crops, s, np.random.default_rng(1)), crops) for s in strengths]
    assert all(a < b for a, b in zip(mses, mses[1:], strict=False)), mses


def test_noise_sigma_and_brightness_clipping() -> None:
    flat = np.full((2, 64, 64, 3), 128, np.uint8)
    noisy = rb.gaussian_noise(flat, 0.1, np.random.default_rng(0)).astype(np.float64)
    assert noisy.std() == pytest.approx(25.5, rel=0.05)
    assert noisy.mean() == pytest.approx(128, abs=0.5)
    x = np.array([[[0, 100, 250]]], np.uint8)
    np.testing.assert_array_equal(rb.brightness(x, 0.1), [[[26, 126, 255]]])
    np.testing.assert_array_equal(rb.brightness(x, -0.5), [[[0, 0, 122]]])


def test_crop_corruptions_validate_input(crops: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        rb.gaussian_blur(crops.astype(np.float32), 1.0)
    with pytest.raises(ValueError, match="shape"):
        rb.jpeg(crops[..., :2], 50)
    with pytest.raises(ValueError):
        rb.jpeg(crops, 0)
    with pytest.raises(ValueError):
        rb.downscale(crops, 1.5)
    with pytest.raises(ValueError):
        rb.gaussian_noise(crops, -0.1, np.random.default_rng(0))


# ----------------------------------------------------------------------- audio corruptions


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 30.0])
def test_add_noise_hits_requested_snr(snr_db: float) -> None:
    w = _tone((300.0, 1200.0), SR, amp=0.2)
    out = rb.add_noise(w, snr_db, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == w.shape
    noise = out.astype(np.float64) - w
    measured = 10 * np.log10(np.mean(w.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=1.0)


def test_add_noise_on_silence_and_batches() -> None:
    silent = np.zeros(1000, np.float32)
    out = rb.AUDIO_CORRUPTIONS["snr"](silent, 10.0, SR, np.random.default_rng(0))
    assert np.all(np.isfinite(out)) and np.array_equal(out, silent)
    # A batch gets each row's own noise level: the quiet row stays quiet.
    w = np.stack([_tone((500.0,), 4000, amp=0.5), _tone((500.0,), 4000, amp=0.005)])
    out = rb.add_noise(w, 20.0, np.random.default_rng(0))
    assert np.std(out[1] - w[1]) == pytest.approx(np.std(out[0] - w[0]) / 100, rel=0.1)


def test_resample_roundtrip_removes_high_tone_keeps_low() -> None:
    w = _tone((1000.0, 6000.0), SR, amp=0.3)
    out = rb.AUDIO_CORRUPTIONS["resample"](w, 8000, SR, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == w.shape
    assert _tone_amp(out, 1000.0) == pytest.approx(0.3, abs=0.01)
    assert _tone_amp(out, 6000.0) < 0.01
    # Rates with an awkward ratio still keep the length exactly.
    for n in (999, 1000, 1001):
        assert rb.resample_roundtrip(w[:n], SR, 11025).shape == (n,)
    np.testing.assert_array_equal(rb.resample_roundtrip(w, SR, SR), w)


def test_lowpass_removes_high_tone_keeps_low_and_is_identity_at_nyquist() -> None:
    w = _tone((1000.0, 6000.0), SR, amp=0.3)
    out = rb.AUDIO_CORRUPTIONS["lowpass"](w, 3000.0, SR, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == w.shape
    assert _tone_amp(out, 1000.0) == pytest.approx(0.3, abs=0.01)
    assert _tone_amp(out, 6000.0) < 0.005
    np.testing.assert_array_equal(rb.lowpass(w, SR, SR / 2), w)
    assert rb.lowpass(w[:10], SR, 3000.0).shape == (10,)  # shorter than scipy's default pad


def test_gain_scales_and_clips() -> None:
    w = np.array([0.1, -0.2, 0.5, -0.9], np.float32)
    np.testing.assert_allclose(rb.AUDIO_CORRUPTIONS["gain"](w, -20.0, SR, None), w / 10, rtol=1e-6)
    loud = rb.gain(w, 12.0)
    assert loud.dtype == np.float32
    np.testing.assert_allclose(loud, np.clip(w * 10 ** 0.6, -1, 1), rtol=1e-6)
    assert loud.max() == 1.0 and loud.min() == -1.0


# ------------------------------------------------------------------------------- attacks


def _bce_loss(model: nn.Module, y: torch.Tensor):
    return lambda x: nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    linear = nn.Linear(12, 1)
    mlp = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 1))
    x = torch.rand(8, 12)
    x[0, :3] = torch.tensor([0.0, 1.0, 0.5])  # on the box edges: clamping must hold
    y = (torch.arange(8) % 2).float()
    return linear, mlp, x, y


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attacks_raise_loss_and_respect_bounds(tiny, method: str) -> None:
    linear, mlp, x, y = tiny
    for model in (linear, mlp):
        loss_fn = _bce_loss(model, y)
        if method == "fgsm":
            adv = rb.fgsm(loss_fn, x, 0.05, lo=0.0, hi=1.0)
        else:
            adv = rb.pgd(loss_fn, x, 0.05, steps=10, lo=0.0, hi=1.0, generator=torch.Generator().manual_seed(0))
        assert not adv.requires_grad and adv.shape == x.shape
        assert (adv - x).abs().max() <= 0.05 + 1e-6
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        with torch.no_grad():
            assert loss_fn(adv) > loss_fn(x) + 1e-3
        assert all(p.grad is None for p in model.parameters())


def test_pgd_at_least_as_strong_as_fgsm(tiny) -> None:
    _, mlp, x, y = tiny
    loss_fn = _bce_loss(mlp, y)
    with torch.no_grad():
        for eps in (0.05, 0.2):
            f = loss_fn(rb.fgsm(loss_fn, x, eps))
            p = loss_fn(rb.pgd(loss_fn, x, eps, steps=20, generator=torch.Generator().manual_seed(0)))
            assert p >= f - 1e-6


def test_attacks_tensor_bounds_zero_eps_and_reproducibility(tiny) -> None:
    linear, _, x, y = tiny
    loss_fn = _bce_loss(linear, y)
    lo = torch.full((1, 12), 0.2)
    hi = torch.linspace(0.6, 1.0, 12)
    adv = rb.pgd(loss_fn, x, 0.3, steps=3, lo=lo, hi=hi, generator=torch.Generator().manual_seed(0))
    assert torch.all(adv >= lo) and torch.all(adv <= hi)
    again = rb.pgd(loss_fn, x, 0.3, steps=3, lo=lo, hi=hi, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)
    assert torch.equal(rb.fgsm(loss_fn, x, 0.0), x)
    assert torch.equal(rb.pgd(loss_fn, x, 0.0, steps=5), x)
    with pytest.raises(ValueError):
        rb.fgsm(loss_fn, x, -0.1)
    with pytest.raises(ValueError, match="scalar"):
        rb.fgsm(lambda z: linear(z).squeeze(-1), x, 0.1)


def test_attack_runs_under_no_grad(tiny) -> None:
    linear, _, x, y = tiny
    with torch.no_grad():
        adv = rb.fgsm(_bce_loss(linear, y), x, 0.1)
    assert not torch.equal(adv, x)


class _AVDetector(nn.Module):
    """Logit from the flattened video plus the audio (so either field can be attacked)."""

    def __init__(self, video_dim: int, audio_dim: int) -> None:
        super().__init__()
        self.v = nn.Sequential(nn.Linear(video_dim, 8), nn.Tanh(), nn.Linear(8, 1))
        self.a = nn.Linear(audio_dim, 1)

    def forward(self, b: Batch) -> torch.Tensor:
        return (self.v(b.video.flatten(1)) + self.a(b.audio)).squeeze(-1)


@pytest.fixture
def av_batch():
    torch.manual_seed(0)
    contract = ContractConfig().build()
    pixels = torch.rand(4, 2, 3, 6, 6)
    pixels[0, 0, :, 0, 0] = 0.0
    pixels[0, 0, :, 0, 1] = 1.0
    mean = torch.tensor(contract.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(contract.std).view(1, 1, 3, 1, 1)
    batch = Batch(
        video=(pixels - mean) / std,
        audio=torch.rand(4, 40) * 1.8 - 0.9,
        video_present=torch.tensor([True, True, True, False]),
        audio_present=torch.ones(4, dtype=torch.bool),
        label=torch.tensor([0.0, 1.0, 1.0, 0.0]),
    )
    model = _AVDetector(2 * 3 * 6 * 6, 40).eval()
    return model, batch, contract, pixels, mean, std


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_attack_batch_video(av_batch, method: str) -> None:
    model, batch, contract, pixels, mean, std = av_batch
    eps = 4 / 255
    out = rb.attack_batch(
        lambda b: model(b), batch, contract, "video", method, eps, steps=5,
        generator=torch.Generator().manual_seed(0),
    )
    adv_pixels = out.video * std + mean
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    assert (adv_pixels - pixels).abs().max() <= eps + 1e-5
    assert out.audio is batch.audio and out.label is batch.label
    assert torch.equal(out.video[3], batch.video[3])  # no face: left alone
    assert all(p.grad is None for p in model.parameters())
    loss = nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        assert loss(model(out), batch.label) > loss(model(batch), batch.label)


def test_attack_batch_audio_and_zero_eps(av_batch) -> None:
    model, batch, contract, *_ = av_batch
    out = rb.attack_batch(lambda b: model(b), batch, contract, "audio", "fgsm", 0.05)
    assert out.video is batch.video
    assert out.audio.min() >= -1 and out.audio.max() <= 1
    assert (out.audio - batch.audio).abs().max() <= 0.05 + 1e-6
    assert not torch.equal(out.audio, batch.audio)
    same = rb.attack_batch(lambda b: model(b), batch, contract, "video", "pgd", 0.0)
    assert torch.equal(same.video, batch.video)


def test_attack_batch_validates(av_batch) -> None:
    model, batch, contract, *_ = av_batch
    with pytest.raises(ValueError, match="field"):
        rb.attack_batch(model, batch, contract, "flow", "fgsm", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        rb.attack_batch(model, batch, contract, "video", "cw", 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label"):
        rb.attack_batch(model, dataclasses.replace(batch, label=None), contract, "video", "fgsm", 0.1)
