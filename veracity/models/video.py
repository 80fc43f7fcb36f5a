"""Video part: any timm backbone applied per frame, optical-flow channels, temporal encoders.

A window of face crops (B, T, 3, S, S) is folded to (B*T) images and run through a timm
backbone (``timm.create_model(name, pretrained=False, num_classes=0, in_chans=3|5)``), so
any of timm's image models can be the frame encoder. With ``use_flow`` the two channels of
the optical flow into each frame (upsampled to the crop size) are stacked on the RGB: the
backbone then sees motion as well as appearance, as in two-stream networks (Simonyan &
Zisserman 2014) but at the price of one stream. When 3-channel pretrained weights are loaded
into a 5-channel first convolution, the flow channels get the mean of the RGB filters
(the "cross-modality initialisation" of TSN, Wang et al. 2016) and the RGB filters are kept.

Frame features then go through a temporal encoder: ``mean`` (plain average: the classic
frame-level baseline), ``tconv`` (residual 1-D convolutions over time, cheap and local: good
for flicker and jitter) or ``transformer`` (a small ``nn.TransformerEncoder`` with learned
positional embeddings: long-range, e.g. blink statistics). Per-step outputs give per-frame
logits (``frame_scores``); attention pooling over steps gives the clip logit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from veracity.contract import DataContract
from veracity.models.base import Batch, DetectorOutput
from veracity.models.layers import AttentionPool, TemporalConvBlock, require
from veracity.models.registry import Detector, build, config_of, read_state_dict, register_detector

log = logging.getLogger(__name__)

TEMPORAL_KINDS = ("mean", "tconv", "transformer")
# Weights files looked for in a timm/Hugging Face style backbone directory, in this order.
_BACKBONE_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "open_clip_pytorch_model.bin")


def prepare_frames(video: torch.Tensor, flow: torch.Tensor | None, use_flow: bool,
                   flow_norm: float = 1.0) -> torch.Tensor:
    """Fold (B, T, 3, S, S) crops (+ flow) into (B*T, 3 or 5, S, S) backbone inputs.

    Flow comes at a lower resolution (extraction stores it at S/2); it is upsampled to the
    crop and its vectors scaled by the same factor, so it is in crop pixels, then divided
    by ``flow_norm``. Missing flow (``None``) is taken as no motion.

    Args:
        video: (B, T, 3, S, S) normalised crops.
        flow: (B, T, 2, S', S') flow into each frame, or None.
        use_flow: append the two flow channels.
        flow_norm: pixels of motion that count as 1.0.

    Returns:
        (B*T, C, S, S).
    """
    b, t, _, h, w = video.shape
    x = video.reshape(b * t, 3, h, w)
    if not use_flow:
        return x
    if flow is None:
        fl = x.new_zeros(b * t, 2, h, w)
    else:
        fl = flow.reshape(b * t, 2, *flow.shape[-2:]).to(x.dtype)
        if fl.shape[-2:] != (h, w):
            scale = torch.tensor([w / fl.shape[-1], h / fl.shape[-2]], dtype=x.dtype, device=x.device)
            fl = F.interpolate(fl, size=(h, w), mode="bilinear", align_corners=False)
            fl = fl * scale.view(1, 2, 1, 1)  # flow channel 0 is dx, 1 is dy
    return torch.cat([x, fl / flow_norm], dim=1)


def widen_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Widen a pretrained (O, 3, k, k) first-conv weight to ``in_chans`` input channels.

    The RGB filters are kept as they are (the pretrained response to RGB is unchanged); each
    extra channel gets the mean of the RGB filters (TSN's cross-modality initialisation).

    Args:
        weight: (O, 3, k, k).
        in_chans: target input channels (> 3).

    Returns:
        (O, in_chans, k, k).
    """
    extra = weight.mean(dim=1, keepdim=True).expand(-1, in_chans - weight.shape[1], -1, -1)
    return torch.cat([weight, extra], dim=1)


def srm_kernels() -> torch.Tensor:
    """The three SRM high-pass filters of Zhou et al. (2018), as a (3, 1, 5, 5) conv weight.

    Each is scaled to unit L2 norm so that the three residuals have comparable ranges.
    """
    k1 = torch.tensor([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0],
                       [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]], dtype=torch.float32)
    k2 = torch.tensor([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
                       [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]], dtype=torch.float32)
    k3 = torch.zeros(5, 5)
    k3[2, 1:4] = torch.tensor([1.0, -2.0, 1.0])
    k = torch.stack([k1, k2, k3])
    return (k / k.flatten(1).norm(dim=1).view(3, 1, 1)).unsqueeze(1)


class FrameEncoder(nn.Module):
    """A timm backbone applied to every frame of a window.

    Args:
        backbone: timm model name (``timm.list_models()``).
        use_flow: 5 input channels (RGB + flow) instead of 3.
        flow_norm: see :func:`prepare_frames`.
        highpass: append three fixed SRM high-pass residuals of the luminance (Fridrich &
            Kodovsky 2012, as in Zhou et al. 2018): blending, resampling and re-rendering
            leave their trace in the noise residual more than in the colours.
        highpass_norm: scale each crop's residuals to unit RMS (per channel). How strong the
            residual is depends on the camera (lens softness, sensor grain, compression);
            where it is weaker than in the rest of the crop is what a resampled or blended
            face leaves. Normalising keeps the pattern and drops the level, which otherwise
            teaches that a soft real face is fake.
        freeze_first: freeze the first N parameter groups of the backbone in timm's coarse
            grouping (``group_matcher(coarse=True)``): 1 = the stem, 2 = stem + first stage...
            Frozen groups also keep their norm layers in eval mode.
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. ``channels`` of a ResNet).
    """

    def __init__(self, backbone: str, use_flow: bool = False, flow_norm: float = 1.0,
                 freeze_first: int = 0, backbone_kwargs: dict[str, Any] | None = None,
                 highpass: bool = False, highpass_norm: bool = False):
        super().__init__()
        import timm  # heavy import (torchvision), deferred to construction

        self.use_flow = use_flow
        self.flow_norm = flow_norm
        self.highpass = highpass
        self.highpass_norm = highpass_norm
        self.in_chans = 3 + 2 * use_flow + 3 * highpass
        if highpass:
            self.register_buffer("srm", srm_kernels(), persistent=False)
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0,
                                          in_chans=self.in_chans, **(backbone_kwargs or {}))
        # head_hidden_size: models with a pre-logits layer (MobileNetV3) output that width.
        self.num_features = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.frozen_modules: list[str] = []
        if freeze_first:
            self._freeze(freeze_first)

    def _freeze(self, n: int) -> None:
        from timm.models import group_modules, group_parameters

        if not hasattr(self.backbone, "group_matcher"):
            raise ValueError(f"{type(self.backbone).__name__} has no group_matcher; freeze_first unsupported")
        matcher = self.backbone.group_matcher(coarse=True)
        groups = group_parameters(self.backbone, matcher)
        ids = sorted(groups)
        if n > len(ids):
            raise ValueError(f"freeze_first={n} but the backbone has {len(ids)} groups")
        params = dict(self.backbone.named_parameters())
        for gid in ids[:n]:
            for pname in groups[gid]:
                params[pname].requires_grad_(False)
        mods = group_modules(self.backbone, matcher)
        self.frozen_modules = [m for gid in ids[:n] for m in mods.get(gid, [])]

    def train(self, mode: bool = True) -> FrameEncoder:
        """Switch mode; norm layers of frozen groups stay in eval (their statistics too)."""
        super().train(mode)
        if mode and self.frozen_modules:
            named = dict(self.backbone.named_modules())
            for name in self.frozen_modules:
                for m in named[name].modules():
                    if isinstance(m, nn.modules.batchnorm._NormBase):
                        m.eval()
        return self

    def forward(self, video: torch.Tensor, flow: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, S, S) crops (+ flow) to (B, T, F) frame features."""
        b, t = video.shape[:2]
        x = prepare_frames(video, flow, self.use_flow, self.flow_norm)
        if self.highpass:
            gray = x[:, :3].mean(dim=1, keepdim=True)
            res = F.conv2d(gray, self.srm.to(gray.dtype), padding=2)
            if self.highpass_norm:
                res = res * torch.rsqrt(res.pow(2).mean(dim=(2, 3), keepdim=True) + 1e-6)
            x = torch.cat([x, res], dim=1)
        return self.backbone(x).reshape(b, t, -1)

    def load_backbone(self, path: Path) -> None:
        """Load timm backbone weights (file or directory), widening the first conv for flow.

        The classifier and any other keys the headless backbone lacks are ignored; every
        backbone parameter must be present.

        Args:
            path: a ``.safetensors``/``.pth``/``.bin`` file or a directory holding one.

        Raises:
            FileNotFoundError: no weights file in the directory.
            ValueError: backbone keys missing or of another shape.
        """
        path = Path(path)
        if path.is_dir():
            found = [path / f for f in _BACKBONE_FILES if (path / f).is_file()]
            if not found:
                raise FileNotFoundError(f"no backbone weights ({', '.join(_BACKBONE_FILES)}) in {path}")
            path = found[0]
        state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
        own = self.backbone.state_dict()
        load: dict[str, torch.Tensor] = {}
        bad: list[str] = []
        for k, target in own.items():
            if k not in state:
                continue
            v = state[k]
            if v.shape != target.shape and v.ndim == 4 and v.shape[1] == 3 and target.shape[1] > 3 \
                    and v.shape[0] == target.shape[0] and v.shape[2:] == target.shape[2:]:
                v = widen_input_conv(v, target.shape[1])
            if v.shape != target.shape:
                bad.append(f"{k}: {tuple(v.shape)} vs {tuple(target.shape)}")
            load[k] = v
        missing = sorted(set(own) - set(load))
        if missing or bad:
            raise ValueError(f"backbone weights in {path} do not fit: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, shape mismatch {bad[:5]}")
        ignored = sorted(set(state) - set(own))
        if ignored:
            log.info("backbone weights: ignored %d keys (e.g. %s)", len(ignored), ignored[:3])
        self.backbone.load_state_dict(load, strict=True)


class TemporalEncoder(nn.Module):
    """Frame tokens (B, T, D) to contextual tokens (B, T, D) and a pooled clip vector (B, D).

    Args:
        kind: ``"mean"``, ``"tconv"`` or ``"transformer"``.
        dim: token width.
        num_frames: frames per window (length of the learned positional embedding; other
            lengths interpolate it).
        layers: number of conv blocks / transformer layers.
        heads: attention heads (transformer).
        kernel_size: temporal kernel (tconv).
        dropout: dropout inside the blocks.
    """

    def __init__(self, kind: str, dim: int, num_frames: int, layers: int = 2, heads: int = 4,
                 kernel_size: int = 3, dropout: float = 0.1):
        super().__init__()
        if kind not in TEMPORAL_KINDS:
            raise ValueError(f"temporal encoder must be one of {TEMPORAL_KINDS}, got {kind!r}")
        self.kind = kind
        self.blocks: nn.Module
        if kind == "mean":
            self.blocks = nn.Identity()
            self.pool = AttentionPool(dim, learned=False)
        elif kind == "tconv":
            self.blocks = nn.Sequential(*[TemporalConvBlock(dim, kernel_size, dropout) for _ in range(layers)])
            self.pool = AttentionPool(dim)
        else:
            self.pos = nn.Parameter(torch.zeros(1, num_frames, dim))
            nn.init.trunc_normal_(self.pos, std=0.02)
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            # enable_nested_tensor only helps padded batches, and warns with norm_first.
            self.blocks = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim),
                                                enable_nested_tensor=False)
            self.pool = AttentionPool(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (tokens (B, T, D), pooled (B, D))."""
        if self.kind == "transformer":
            pos = self.pos
            if pos.shape[1] != x.shape[1]:
                pos = F.interpolate(pos.transpose(1, 2), size=x.shape[1], mode="linear",
                                    align_corners=False).transpose(1, 2)
            x = x + pos
        tokens = self.blocks(x)
        return tokens, self.pool(tokens)


class VideoBranch(nn.Module):
    """Frame encoder + projection + temporal encoder: crops to tokens and a clip vector.

    Args:
        contract: data contract (frames per window).
        backbone, backbone_kwargs, use_flow, flow_norm, freeze_first, highpass, highpass_norm: see
            :class:`FrameEncoder`.
        temporal, temporal_layers, temporal_heads, temporal_kernel: see :class:`TemporalEncoder`.
        dim: token width after the projection.
        dropout: dropout in the temporal encoder.
        frame_stride: encode every n-th frame of the window only (its flow is still the
            motion into that frame); tokens are repeated back to one per frame. Neighbouring
            frames at 12.5 fps carry nearly the same texture, so a stride of 2 halves the cost
            and buys twice the windows per epoch for the same compute.
    """

    def __init__(self, contract: DataContract, backbone: str = "resnet10t",
                 backbone_kwargs: dict[str, Any] | None = None, use_flow: bool = True,
                 flow_norm: float = 1.0, freeze_first: int = 0, temporal: str = "tconv",
                 temporal_layers: int = 2, temporal_heads: int = 4, temporal_kernel: int = 3,
                 dim: int = 128, dropout: float = 0.1, highpass: bool = False, frame_stride: int = 1,
                 highpass_norm: bool = False):
        super().__init__()
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = frame_stride
        self.frames = FrameEncoder(backbone, use_flow, flow_norm, freeze_first, backbone_kwargs, highpass,
                                   highpass_norm)
        self.proj = nn.Sequential(nn.Linear(self.frames.num_features, dim), nn.LayerNorm(dim))
        steps = -(-contract.frames_per_window // frame_stride)
        self.temporal = TemporalEncoder(temporal, dim, steps, temporal_layers, temporal_heads,
                                        temporal_kernel, dropout)
        self.dim = dim

    def forward(self, video: torch.Tensor, flow: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (tokens (B, T, dim), pooled (B, dim)): one token per input frame."""
        t, s = video.shape[1], self.frame_stride
        if s > 1:
            video = video[:, ::s]
            flow = flow[:, ::s] if flow is not None else None
        tokens, pooled = self.temporal(self.proj(self.frames(video, flow)))
        if s > 1:
            tokens = tokens.repeat_interleave(s, dim=1)[:, :t]
        return tokens, pooled


class VideoDetector(Detector):
    """Video-only detector: :class:`VideoBranch` + per-frame and clip heads.

    Samples without a face (``video_present`` False) are computed like the others; the
    training code leaves them out of the loss.

    Args:
        contract: data contract.
        backbone, backbone_kwargs, use_flow, flow_norm, freeze_first, highpass, highpass_norm, frame_stride, temporal,
            temporal_layers, temporal_heads, temporal_kernel, dim: see :class:`VideoBranch`.
        dropout: dropout in the temporal encoder and before the clip head.
    """

    modality = "video"

    def __init__(self, contract: DataContract, backbone: str = "resnet10t",
                 backbone_kwargs: dict[str, Any] | None = None, use_flow: bool = True,
                 flow_norm: float = 1.0, freeze_first: int = 0, temporal: str = "tconv",
                 temporal_layers: int = 2, temporal_heads: int = 4, temporal_kernel: int = 3,
                 dim: int = 128, dropout: float = 0.1, highpass: bool = False, frame_stride: int = 1,
                 highpass_norm: bool = False):
        cfg = config_of(locals())
        super().__init__(contract)
        self.config = cfg
        branch_kw = {k: v for k, v in cfg.items()}
        self.branch = VideoBranch(contract, **branch_kw)
        self.frame_head = nn.Linear(dim, 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))

    def forward(self, batch: Batch) -> DetectorOutput:
        """Score a batch of windows (needs ``batch.video``; uses ``batch.flow`` if any)."""
        require(batch, "video")
        tokens, pooled = self.branch(batch.video, batch.flow)
        return DetectorOutput.from_logits(self.head(pooled).squeeze(-1),
                                          frame_scores=self.frame_head(tokens).squeeze(-1),
                                          features=pooled)

    def parts(self) -> dict[str, nn.Module]:
        """The video branch (frame encoder + temporal encoder)."""
        return {"video": self.branch}

    def load_backbone(self, path: Path) -> None:
        """Load timm backbone weights; see :meth:`FrameEncoder.load_backbone`."""
        self.branch.frames.load_backbone(path)


def is_timm_dir(path: Path) -> bool:
    """Whether a directory looks like a timm checkpoint (``config.json`` names an architecture)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return any((Path(path) / f).is_file() for f in _BACKBONE_FILES)
    try:
        return "architecture" in json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False


# ------------------------------------------------------------------------------ variants

# A ResNet-10-T (timm) at a quarter of its widths: at 64x64 crops it is ~4x cheaper than the
# standard widths; pass backbone_kwargs={} to get the standard widths (for pretrained weights).
NARROW_RESNET = {"channels": [32, 64, 128, 256], "stem_width": 16}
TINY_RESNET = {"channels": [8, 16, 32, 64], "stem_width": 8}


@register_detector
def video_specialist(contract: DataContract, **overrides: Any) -> VideoDetector:
    """Narrow ResNet-10-T on RGB + flow + SRM residuals (normalised per crop) of every 2nd
    frame, 1-D temporal convolutions (default video member)."""
    return build(VideoDetector, contract, dict(backbone="resnet10t", backbone_kwargs=NARROW_RESNET,
                                               use_flow=True, highpass=True, highpass_norm=True, frame_stride=2,
                                               temporal="tconv", temporal_layers=2, dim=128), overrides)


@register_detector
def video_transformer(contract: DataContract, **overrides: Any) -> VideoDetector:
    """Narrow ResNet-10-T on RGB + flow + SRM residuals with a 2-layer temporal transformer."""
    return build(VideoDetector, contract, dict(backbone="resnet10t", backbone_kwargs=NARROW_RESNET,
                                               use_flow=True, highpass=True, temporal="transformer", temporal_layers=2,
                                               temporal_heads=4, dim=128), overrides)


@register_detector
def video_mobilenet(contract: DataContract, **overrides: Any) -> VideoDetector:
    """MobileNetV3-Small-0.5 on RGB + flow, 1-D temporal convolutions."""
    return build(VideoDetector, contract, dict(backbone="mobilenetv3_small_050", backbone_kwargs={},
                                               use_flow=True, temporal="tconv", dim=128), overrides)


@register_detector
def tiny_video(contract: DataContract, **overrides: Any) -> VideoDetector:
    """Tiny ResNet-10-T on RGB + flow + normalised SRM residuals, temporal convolutions (tests)."""
    return build(VideoDetector, contract, dict(backbone="resnet10t", backbone_kwargs=TINY_RESNET,
                                               use_flow=True, highpass=True, highpass_norm=True, temporal="tconv", temporal_layers=1,
                                               dim=16), overrides)


@register_detector
def tiny_video_transformer(contract: DataContract, **overrides: Any) -> VideoDetector:
    """Tiny timm test ConvNeXt on RGB with a 1-layer temporal transformer (tests)."""
    return build(VideoDetector, contract, dict(backbone="test_convnext", backbone_kwargs={},
                                               use_flow=False, temporal="transformer", temporal_layers=1,
                                               temporal_heads=2, dim=16), overrides)


@register_detector
def tiny_video_mean(contract: DataContract, **overrides: Any) -> VideoDetector:
    """Tiny timm test EfficientNet on RGB, mean over frames (tests)."""
    return build(VideoDetector, contract, dict(backbone="test_efficientnet", backbone_kwargs={},
                                               use_flow=False, temporal="mean", dim=16), overrides)
