"""Audio part: three waveform encoders and VAD-gated pooling.

- **log-mel ResNet**: a log-mel spectrogram (``torch.stft`` + a triangular mel filterbank
  built here, since torchaudio is not a dependency) read by a small 2-D ResNet; tokens are
  frequency-pooled columns (80 ms apart by default). Spectral-envelope and band-limit artifacts of
  vocoders (the ASVspoof attack families) are plainly visible to it.
- **RawNet2-style** (Jung et al. 2020, "Improved RawNet with feature map scaling for
  text-independent speaker verification using raw waveforms"; Tak et al. 2021, "End-to-end
  anti-spoofing with RawNet2"): a learnable sinc band-pass filterbank on the raw waveform
  (SincConv, Ravanelli & Bengio 2018, "Speaker recognition from raw waveform with SincNet",
  initialised on the mel scale), residual 1-D conv blocks with max-pooling and filter-wise
  feature-map scaling (FMS), then a GRU.
- **wav2vec 2.0** (Baevski et al. 2020, "wav2vec 2.0: A framework for self-supervised
  learning of speech representations") from ``transformers``: built from a
  ``Wav2Vec2Config`` (random init) or loaded from a *local* checkpoint directory
  (``local_files_only=True``); the convolutional feature encoder and the first N transformer
  layers can be frozen (fine-tuning only the top layers is the usual recipe for spoofing
  detection on small data).

Every encoder maps (B, N) samples to (B, L, C) tokens. :class:`AudioBranch` projects them
and pools them over time with attention gated by the voice-activity mask (resampled to the
token rate): unvoiced tokens are left out of the pooling (partially voiced ones
down-weighted), and a sample with no voiced token falls back to ungated pooling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from veracity.contract import DataContract
from veracity.models.base import Batch, DetectorOutput
from veracity.models.layers import AttentionPool, ResBlock2d, require, resample_mask
from veracity.models.registry import Detector, build, config_of, register_detector

ENCODERS = ("logmel", "rawnet", "wav2vec2")


# --------------------------------------------------------------------------- log-mel

def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Triangular mel filterbank (HTK scale, peak 1), as in ``torchaudio.functional.melscale_fbanks``.

    Args:
        sample_rate: Hz.
        n_fft: FFT size (``n_fft // 2 + 1`` frequency bins).
        n_mels: number of filters.
        f_min: lowest edge, Hz.
        f_max: highest edge, Hz (default Nyquist).

    Returns:
        (n_fft // 2 + 1, n_mels) float32.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    return np.maximum(0.0, np.minimum(up, down)).T.astype(np.float32)


class LogMel(nn.Module):
    """Log-mel spectrogram: (B, N) samples to (B, n_mels, frames).

    The window and filterbank are non-persistent buffers: derived from the arguments, so
    they are not in the ``state_dict`` but follow ``.to(device)``.

    Args:
        sample_rate: Hz.
        n_mels: mel bands.
        n_fft: FFT size.
        win_length: analysis window (25 ms at 16 kHz by default).
        hop_length: hop (10 ms at 16 kHz: the VAD's hop, so the two line up).
        f_min: lowest mel edge, Hz.
        f_max: highest mel edge, Hz (default Nyquist).
    """

    def __init__(self, sample_rate: int, n_mels: int = 64, n_fft: int = 512, win_length: int = 400,
                 hop_length: int = 160, f_min: float = 20.0, f_max: float | None = None):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        self.register_buffer("fbank", torch.from_numpy(fb), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) samples to (B, n_mels, N // hop + 1) log mel energies (float32)."""
        # Float32 even under autocast: power spectra of a loud window overflow fp16.
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(x.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                              center=True, pad_mode="constant", return_complex=True)
            power = spec.real.square() + spec.imag.square()  # (B, F, frames)
            mel = torch.einsum("bft,fm->bmt", power, self.fbank)
            return torch.log(mel + 1e-6)


class LogMelEncoder(nn.Module):
    """Log-mel spectrogram + small 2-D ResNet; tokens are frequency-pooled time columns.

    Args:
        sample_rate: Hz.
        n_mels: mel bands.
        channels: widths of the stride-2 stem and the residual stages; the stem and every
            stage halve frequency, the stem and all stages but the first halve time (tokens
            are ``hop * 2 ** len(channels)`` samples apart: 80 ms with 3 stages).
        n_fft, win_length, hop_length: STFT parameters (see :class:`LogMel`).
    """

    def __init__(self, sample_rate: int, n_mels: int = 64, channels: tuple[int, ...] = (16, 32, 64),
                 n_fft: int = 512, win_length: int = 400, hop_length: int = 160):
        super().__init__()
        self.mel = LogMel(sample_rate, n_mels, n_fft, win_length, hop_length)
        # Per-band input normalisation with learned affine: log energies sit around -5..5
        # and differ by band; BatchNorm removes that without a dataset statistics pass.
        self.norm = nn.BatchNorm1d(n_mels)
        # Stride-2 stem: small-channel convolutions at full spectrogram resolution are
        # memory-bound on CPU and cost most of the time for little gain.
        self.stem = nn.Sequential(nn.Conv2d(1, channels[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))
        blocks, cin = [], channels[0]
        for i, c in enumerate(channels):
            blocks.append(ResBlock2d(cin, c, stride=(2, 1) if i == 0 else (2, 2)))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = channels[-1]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) to (B, L, C)."""
        m = self.norm(self.mel(audio)).unsqueeze(1)  # (B, 1, mels, frames)
        y = self.blocks(self.stem(m))  # (B, C, mels', frames')
        return y.mean(dim=2).transpose(1, 2)


# --------------------------------------------------------------------------- RawNet2

class SincConv(nn.Module):
    """Learnable band-pass filterbank parameterised by cut-off frequencies (SincNet).

    Each filter is the difference of two windowed sinc low-pass filters; only the low cut-off
    and the bandwidth of each filter are learned. Initial bands are equally spaced on the
    mel scale (Ravanelli & Bengio 2018). Cut-offs are stored in kHz so that an optimiser
    step of ~1e-3 moves them by Hz, not by a fraction of a Hz.

    Args:
        out_channels: number of filters.
        kernel_size: filter length (made odd).
        sample_rate: Hz.
        min_low_hz: lowest low cut-off.
        min_band_hz: narrowest band.
        stride: convolution stride.
    """

    _KHZ = 1000.0

    def __init__(self, out_channels: int, kernel_size: int, sample_rate: int, min_low_hz: float = 50.0,
                 min_band_hz: float = 50.0, stride: int = 1):
        super().__init__()
        self.kernel_size = kernel_size if kernel_size % 2 else kernel_size + 1
        self.sample_rate, self.stride = sample_rate, stride
        self.min_low_hz, self.min_band_hz = min_low_hz, min_band_hz
        high = sample_rate / 2 - (min_low_hz + min_band_hz)
        hz = mel_to_hz(np.linspace(hz_to_mel(30.0), hz_to_mel(high), out_channels + 1))
        self.low_hz = nn.Parameter(torch.tensor(hz[:-1], dtype=torch.float32).view(-1, 1) / self._KHZ)
        self.band_hz = nn.Parameter(torch.tensor(np.diff(hz), dtype=torch.float32).view(-1, 1) / self._KHZ)
        half = self.kernel_size // 2
        n_lin = torch.linspace(0, self.kernel_size / 2 - 1, steps=half)
        self.register_buffer("window", 0.54 - 0.46 * torch.cos(2 * math.pi * n_lin / self.kernel_size),
                             persistent=False)  # left half of a Hamming window
        self.register_buffer("n", 2 * math.pi * torch.arange(-half, 0).float().view(1, -1) / sample_rate,
                             persistent=False)

    def filters(self) -> torch.Tensor:
        """The current filters, (out_channels, 1, kernel_size), peak-normalised."""
        low = self.min_low_hz + self.low_hz.abs() * self._KHZ
        high = torch.clamp(low + self.min_band_hz + self.band_hz.abs() * self._KHZ,
                           self.min_low_hz, self.sample_rate / 2)
        band = (high - low)[:, 0]
        left = (torch.sin(high @ self.n) - torch.sin(low @ self.n)) / (self.n / 2) * self.window
        center = 2 * band.view(-1, 1)
        bp = torch.cat([left, center, torch.flip(left, dims=[1])], dim=1) / (2 * band[:, None])
        return bp.view(-1, 1, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, N) to (B, out_channels, N / stride)."""
        return F.conv1d(x, self.filters(), stride=self.stride, padding=self.kernel_size // 2)


class FMS(nn.Module):
    """Filter-wise feature map scaling (RawNet2): ``x * s + s`` with ``s = sigmoid(fc(mean_t x))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc(x.mean(dim=-1))).unsqueeze(-1)
        return x * s + s


class RawResBlock(nn.Module):
    """RawNet2 residual block: (BN, LeakyReLU,) conv3, BN, LeakyReLU, conv3, + skip, max-pool 3, FMS."""

    def __init__(self, cin: int, cout: int, first: bool = False):
        super().__init__()
        self.pre = nn.Identity() if first else nn.Sequential(nn.BatchNorm1d(cin), nn.LeakyReLU(0.3))
        self.body = nn.Sequential(nn.Conv1d(cin, cout, 3, padding=1), nn.BatchNorm1d(cout),
                                  nn.LeakyReLU(0.3), nn.Conv1d(cout, cout, 3, padding=1))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()
        self.pool = nn.MaxPool1d(3)
        self.fms = FMS(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fms(self.pool(self.body(self.pre(x)) + self.skip(x)))


class RawNetEncoder(nn.Module):
    """RawNet2-style raw-waveform encoder: SincConv, residual blocks, optional GRU.

    Args:
        sample_rate: Hz.
        sinc_channels: sinc filters.
        sinc_kernel: sinc filter length (samples).
        channels: widths of the residual blocks (each max-pools time by 3).
        gru_hidden: GRU width; 0 for no GRU (tokens are the last block's features).
    """

    def __init__(self, sample_rate: int, sinc_channels: int = 20, sinc_kernel: int = 129,
                 channels: tuple[int, ...] = (20, 32, 32, 64, 64), gru_hidden: int = 64):
        super().__init__()
        self.sinc = SincConv(sinc_channels, sinc_kernel, sample_rate)
        self.sinc_post = nn.Sequential(nn.MaxPool1d(3), nn.BatchNorm1d(sinc_channels), nn.LeakyReLU(0.3))
        blocks, cin = [], sinc_channels
        for i, c in enumerate(channels):
            blocks.append(RawResBlock(cin, c, first=i == 0))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.post = nn.Sequential(nn.BatchNorm1d(cin), nn.LeakyReLU(0.3))
        self.gru = nn.GRU(cin, gru_hidden, batch_first=True) if gru_hidden else None
        self.out_dim = gru_hidden or cin

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) to (B, L, C), L ~ N / 3 ** (len(channels) + 1)."""
        x = self.sinc_post(self.sinc(audio.unsqueeze(1)).abs())
        x = self.post(self.blocks(x)).transpose(1, 2)
        if self.gru is not None:
            x, _ = self.gru(x)
        return x


# --------------------------------------------------------------------------- wav2vec 2.0

# Keys of a Hugging Face wav2vec2 config that shape the encoder or its regularisation.
W2V_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "layerdrop",
    "layer_norm_eps", "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride",
    "conv_kernel", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
    "do_stable_layer_norm", "apply_spec_augment", "mask_time_prob", "mask_time_length",
    "mask_time_min_masks", "mask_feature_prob", "mask_feature_length", "mask_feature_min_masks",
)

W2V_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
                num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="group",
                do_stable_layer_norm=False)


def wav2vec2_config_from_dir(path: Path | str) -> dict[str, Any] | None:
    """The architecture keys of a local Hugging Face wav2vec2 checkpoint, or None if it is not one.

    Args:
        path: a checkpoint directory (with ``config.json``).

    Returns:
        The :data:`W2V_KEYS` present in its config, or None.
    """
    cfg = Path(path) / "config.json"
    if not Path(path).is_dir() or not cfg.is_file():
        return None
    data = json.loads(cfg.read_text())
    if data.get("model_type") != "wav2vec2":
        return None
    return {k: data[k] for k in W2V_KEYS if k in data}


class Wav2Vec2Encoder(nn.Module):
    """A ``transformers`` wav2vec 2.0 model as a token encoder (last hidden state).

    Args:
        w2v_config: ``Wav2Vec2Config`` arguments (see :data:`W2V_KEYS`).
        freeze_feature_encoder: freeze the convolutional feature encoder.
        freeze_layers: freeze the feature projection, positional convolution and the first
            N transformer layers as well.
        normalize: zero-mean unit-variance each waveform first, as wav2vec2's feature
            extractor does (``do_normalize``).
    """

    def __init__(self, w2v_config: dict[str, Any], freeze_feature_encoder: bool = False,
                 freeze_layers: int = 0, normalize: bool = True):
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2Model  # heavy, deferred

        self.model = Wav2Vec2Model(Wav2Vec2Config(**w2v_config))
        self.normalize = normalize
        self.out_dim = self.model.config.hidden_size
        n_layers = len(self.model.encoder.layers)
        if freeze_layers > n_layers:
            raise ValueError(f"freeze_layers={freeze_layers} but the model has {n_layers} layers")
        if freeze_feature_encoder or freeze_layers:
            self.model.freeze_feature_encoder()
        if freeze_layers:
            frozen = [self.model.feature_projection, self.model.encoder.pos_conv_embed,
                      *self.model.encoder.layers[:freeze_layers]]
            for m in frozen:
                m.requires_grad_(False)
            # masked_spec_embed is used only by SpecAugment during training; left as is.

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) to (B, L, hidden), L ~ N / prod(conv_stride)."""
        x = audio
        if self.normalize:
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + 1e-7)
        return self.model(x).last_hidden_state

    def load_pretrained(self, path: Path | str) -> None:
        """Copy the weights of a local checkpoint directory (``local_files_only=True``).

        Raises:
            ValueError: the checkpoint's weights do not fit this encoder.
        """
        from transformers import Wav2Vec2Model

        src = Wav2Vec2Model.from_pretrained(str(path), local_files_only=True)
        self.model.load_state_dict(src.state_dict(), strict=True)


def make_audio_encoder(kind: str, sample_rate: int, **kwargs: Any) -> nn.Module:
    """Build an audio encoder by kind (``logmel``, ``rawnet``, ``wav2vec2``).

    Args:
        kind: one of :data:`ENCODERS`.
        sample_rate: Hz (ignored by wav2vec2, which assumes 16 kHz input).
        **kwargs: the encoder's arguments.

    Returns:
        A module mapping (B, N) to (B, L, C), with an ``out_dim`` attribute.
    """
    if kind == "logmel":
        return LogMelEncoder(sample_rate, **kwargs)
    if kind == "rawnet":
        return RawNetEncoder(sample_rate, **kwargs)
    if kind == "wav2vec2":
        if sample_rate != 16000:
            raise ValueError(f"wav2vec2 expects 16 kHz audio, the contract says {sample_rate}")
        return Wav2Vec2Encoder(**kwargs)
    raise ValueError(f"audio encoder must be one of {ENCODERS}, got {kind!r}")


class AudioBranch(nn.Module):
    """Audio encoder + projection + VAD-gated pooling: waveform to tokens and a clip vector.

    Args:
        contract: data contract (sample rate).
        encoder: ``logmel``, ``rawnet`` or ``wav2vec2``.
        encoder_kwargs: arguments of the encoder.
        dim: token width after the projection.
        pool: ``attn`` (learned attention pooling) or ``mean``.
        use_vad: gate the pooling with ``batch.vad`` when given.
    """

    def __init__(self, contract: DataContract, encoder: str = "logmel",
                 encoder_kwargs: dict[str, Any] | None = None, dim: int = 128, pool: str = "attn",
                 use_vad: bool = True):
        super().__init__()
        if pool not in ("attn", "mean"):
            raise ValueError(f"pool must be 'attn' or 'mean', got {pool!r}")
        self.kind = encoder
        self.encoder = make_audio_encoder(encoder, contract.sample_rate, **(encoder_kwargs or {}))
        self.proj = nn.Sequential(nn.Linear(self.encoder.out_dim, dim), nn.LayerNorm(dim))
        self.pool = AttentionPool(dim, learned=pool == "attn")
        self.use_vad = use_vad
        self.dim = dim

    def gate(self, vad: torch.Tensor | None, length: int) -> torch.Tensor | None:
        """VAD resampled to ``length`` tokens (share of voiced hops), or None when not gating."""
        if not self.use_vad or vad is None:
            return None
        return resample_mask(vad, length)

    def forward(self, audio: torch.Tensor, vad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (tokens (B, L, dim), pooled (B, dim))."""
        tokens = self.proj(self.encoder(audio))
        return tokens, self.pool(tokens, self.gate(vad, tokens.shape[1]))

    def checkpoint_config(self, path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
        """This branch's config with the architecture of a wav2vec2 checkpoint, or None."""
        w2v = wav2vec2_config_from_dir(path)
        if w2v is None or self.kind != "wav2vec2":
            return None
        kw = dict(config.get("encoder_kwargs") or {})
        kw["w2v_config"] = {**kw.get("w2v_config", {}), **w2v}
        return {**config, "encoder_kwargs": kw}

    def load_pretrained(self, path: Path) -> None:
        """Load a local wav2vec2 checkpoint directory into the encoder.

        Raises:
            ValueError: the encoder is not wav2vec2, or the path is not a wav2vec2 checkpoint.
        """
        if self.kind != "wav2vec2" or wav2vec2_config_from_dir(path) is None:
            raise ValueError(f"{path} is not a wav2vec2 checkpoint directory for a wav2vec2 encoder "
                             f"(this audio encoder is {self.kind!r})")
        self.encoder.load_pretrained(path)


_BRANCH_KEYS = ("encoder", "encoder_kwargs", "dim", "pool", "use_vad")


class AudioDetector(Detector):
    """Audio-only detector: :class:`AudioBranch` + a clip head.

    Samples without audio (``audio_present`` False) are computed like the others; the
    training code leaves them out of the loss.

    Args:
        contract: data contract.
        encoder, encoder_kwargs, dim, pool, use_vad: see :class:`AudioBranch`.
        dropout: before the clip head.
    """

    modality = "audio"

    def __init__(self, contract: DataContract, encoder: str = "logmel",
                 encoder_kwargs: dict[str, Any] | None = None, dim: int = 128, pool: str = "attn",
                 use_vad: bool = True, dropout: float = 0.1):
        cfg = config_of(locals())
        super().__init__(contract)
        self.config = cfg
        self.branch = AudioBranch(contract, **{k: cfg[k] for k in _BRANCH_KEYS})
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))

    def parts(self) -> dict[str, nn.Module]:
        """The audio branch (encoder + pooling)."""
        return {"audio": self.branch}

    def forward(self, batch: Batch) -> DetectorOutput:
        """Score a batch of windows (needs ``batch.audio``; uses ``batch.vad`` if any)."""
        require(batch, "audio")
        _, pooled = self.branch(batch.audio, batch.vad)
        return DetectorOutput.from_logits(self.head(pooled).squeeze(-1), features=pooled)

    def checkpoint_overrides(self, path: Path) -> dict[str, Any]:
        """A wav2vec2 checkpoint directory fixes the encoder's architecture."""
        cfg = self.branch.checkpoint_config(path, {k: self.config[k] for k in _BRANCH_KEYS})
        return {} if cfg is None else {"encoder_kwargs": cfg["encoder_kwargs"]}

    def load_backbone(self, path: Path) -> None:
        """Load a local wav2vec2 checkpoint directory; see :meth:`AudioBranch.load_pretrained`."""
        self.branch.load_pretrained(path)


# ------------------------------------------------------------------------------ variants

LOGMEL = dict(n_mels=64, channels=[16, 32, 64])
RAWNET = dict(sinc_channels=20, sinc_kernel=129, channels=[20, 32, 32, 64, 64], gru_hidden=64)
# A wav2vec2-base-shaped model (7-layer conv encoder, post-LN transformer) at CPU size.
W2V_SMALL = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
                 conv_dim=[64] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2],
                 num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8, layerdrop=0.0,
                 apply_spec_augment=False)
W2V_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                conv_dim=[32] * 4, conv_stride=[5, 4, 4, 4], conv_kernel=[10, 8, 4, 4],
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, layerdrop=0.0,
                apply_spec_augment=False)


@register_detector
def audio_specialist(contract: DataContract, **overrides: Any) -> AudioDetector:
    """Log-mel ResNet with VAD-gated attention pooling (default audio member)."""
    return build(AudioDetector, contract, dict(encoder="logmel", encoder_kwargs=LOGMEL, dim=128), overrides)


@register_detector
def audio_logmel(contract: DataContract, **overrides: Any) -> AudioDetector:
    """Log-mel ResNet with VAD-gated attention pooling."""
    return build(AudioDetector, contract, dict(encoder="logmel", encoder_kwargs=LOGMEL, dim=128), overrides)


@register_detector
def audio_rawnet(contract: DataContract, **overrides: Any) -> AudioDetector:
    """RawNet2-style sinc filterbank + residual blocks + GRU, VAD-gated attention pooling."""
    return build(AudioDetector, contract, dict(encoder="rawnet", encoder_kwargs=RAWNET, dim=128), overrides)


@register_detector
def audio_wav2vec2(contract: DataContract, **overrides: Any) -> AudioDetector:
    """wav2vec 2.0 shaped like base (7 conv layers) but small (4 x 128), trained from scratch."""
    return build(AudioDetector, contract, dict(encoder="wav2vec2", encoder_kwargs=dict(w2v_config=W2V_SMALL),
                                               dim=128), overrides)


@register_detector
def audio_wav2vec2_base(contract: DataContract, **overrides: Any) -> AudioDetector:
    """wav2vec 2.0 base (12 x 768) for a local pretrained checkpoint; conv encoder + 8 layers frozen."""
    enc = dict(w2v_config=W2V_BASE, freeze_feature_encoder=True, freeze_layers=8)
    return build(AudioDetector, contract, dict(encoder="wav2vec2", encoder_kwargs=enc, dim=256), overrides)


@register_detector
def tiny_audio(contract: DataContract, **overrides: Any) -> AudioDetector:
    """Tiny log-mel ResNet (the encoder of audio_specialist; tests)."""
    return build(AudioDetector, contract, dict(encoder="logmel", encoder_kwargs=dict(n_mels=32, channels=[8, 16]),
                                               dim=16), overrides)


@register_detector
def tiny_logmel(contract: DataContract, **overrides: Any) -> AudioDetector:
    """Tiny log-mel ResNet with mean pooling (tests)."""
    return build(AudioDetector, contract, dict(encoder="logmel", encoder_kwargs=dict(n_mels=32, channels=[8, 16]),
                                               dim=16, pool="mean"), overrides)


@register_detector
def tiny_rawnet(contract: DataContract, **overrides: Any) -> AudioDetector:
    """Tiny RawNet2-style encoder (tests)."""
    enc = dict(sinc_channels=8, sinc_kernel=65, channels=[8, 16, 16], gru_hidden=16)
    return build(AudioDetector, contract, dict(encoder="rawnet", encoder_kwargs=enc, dim=16), overrides)


@register_detector
def tiny_wav2vec2(contract: DataContract, **overrides: Any) -> AudioDetector:
    """Tiny wav2vec 2.0 (2 x 64, 4 conv layers) from a config (tests)."""
    return build(AudioDetector, contract, dict(encoder="wav2vec2", encoder_kwargs=dict(w2v_config=W2V_TINY),
                                               dim=16), overrides)
