"""Small building blocks shared by the video, audio, lip-sync and fusion parts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from veracity.models.base import Batch


def require(batch: Batch, *names: str) -> None:
    """Raise ValueError when a batch lacks a tensor a detector needs."""
    missing = [n for n in names if getattr(batch, n) is None]
    if missing:
        raise ValueError(f"batch has no {', '.join(missing)}")


def resample_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Resample a (B, K) 0/1 mask to (B, length) fractions by averaging over each span.

    Used to bring the 10 ms VAD hops to an encoder's token rate: a token's weight is the
    share of voiced hops under it.

    Args:
        mask: (B, K) bool or float.
        length: target number of steps.

    Returns:
        (B, length) float in [0, 1].
    """
    m = mask.float()
    if m.shape[-1] == length:
        return m
    if m.shape[-1] == 0:
        return m.new_zeros(m.shape[0], length)
    return F.adaptive_avg_pool1d(m.unsqueeze(1), length).squeeze(1)


class AttentionPool(nn.Module):
    """Attention pooling over time, optionally gated by a per-step weight in [0, 1].

    Softmax weights are ``exp(score_t) * gate_t``: a step with gate 0 is left out, a
    partial one is down-weighted. A sample whose gates are all zero falls back to the
    ungated pooling (an unvoiced clip still gets a representation). With ``learned=False``
    the score is constant, so the pooling is a (gated) mean.

    Args:
        dim: feature width.
        learned: learn a score per step (attention) or not (mean).
    """

    def __init__(self, dim: int, learned: bool = True):
        super().__init__()
        self.score = nn.Linear(dim, 1) if learned else None

    def weights(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling weights (B, T), summing to one per sample."""
        s = self.score(x).squeeze(-1) if self.score is not None else x.new_zeros(x.shape[:2])
        if gate is not None:
            g = gate.to(s.dtype)
            voiced = g.sum(-1, keepdim=True) > 0
            g = torch.where(voiced, g, torch.ones_like(g))  # fallback: no voiced step
            s = torch.where(g > 0, s + torch.log(g.clamp_min(1e-12)), torch.full_like(s, float("-inf")))
        return torch.softmax(s, dim=-1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """Pool (B, T, D) to (B, D)."""
        return torch.einsum("bt,btd->bd", self.weights(x, gate), x)


class ResBlock2d(nn.Module):
    """Basic residual block (He et al. 2016) for spectrograms and mouth crops."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int] = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        down = stride != 1 and stride != (1, 1)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if down or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.skip(x))


class TemporalConvBlock(nn.Module):
    """Pre-norm residual 1-D convolution over time on (B, T, D) tokens."""

    def __init__(self, dim: int, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.drop(F.gelu(y))


def mlp_head(din: int, hidden: int, dropout: float) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear(1): a logit head."""
    return nn.Sequential(nn.LayerNorm(din), nn.Linear(din, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, 1))
