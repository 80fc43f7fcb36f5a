"""Audio-visual fusion: concatenation or gated cross-modal attention, with missing modalities.

Two fusion rules over the video part (:class:`~veracity.models.video.VideoBranch`: frame
tokens at the video rate) and the audio part (:class:`~veracity.models.audio.AudioBranch`:
audio tokens at the encoder's rate):

- ``concat``: pooled video ++ pooled audio (++ sync features) -> MLP. The late-fusion
  baseline.
- ``xattn``: video frame tokens are queries attending over audio tokens (keys/values,
  projected to the video width); a learned sigmoid gate, computed per token and channel
  from the video token and its audio context, decides how much of that context is mixed
  into the token (``v + gate * ctx``). Gated cross-attention lets the model learn *where*
  hearing changes what is seen (a moving mouth with no matching sound) without letting
  audio overwrite the visual evidence; the idea follows gated cross-attention in
  Flamingo (Alayrac et al. 2022) and audio-visual deepfake detectors such as AVFF
  (Oorloff et al. 2024).

Missing modalities are explicit: where ``video_present`` / ``audio_present`` is False, the
modality's tokens and pooled vector are replaced by learned "missing" embeddings (and the
sync features by a learned "sync unknown" vector), so the head learns what an absent face
or a silent track means instead of reading zeros as evidence. Modality dropout (training
only) sends random samples down that same path so that each modality alone stays useful.
Per-modality heads on the un-fused pooled vectors give auxiliary logits
``aux["video"]``/``aux["audio"]`` (and ``aux["sync"]`` with the lip-sync head); the
training code masks their losses where a modality is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from veracity.contract import DataContract
from veracity.models.audio import LOGMEL, AudioBranch, wav2vec2_config_from_dir
from veracity.models.base import Batch, DetectorOutput
from veracity.models.layers import AttentionPool, mlp_head
from veracity.models.lipsync import LIPSYNC, TINY_LIPSYNC, SyncHead
from veracity.models.registry import Detector, build, config_of, register_detector
from veracity.models.video import NARROW_RESNET, TINY_RESNET, VideoBranch

FUSIONS = ("concat", "xattn")


def _presence(flag: torch.Tensor | None, has_input: bool, b: int, device: torch.device) -> torch.Tensor:
    if not has_input:
        return torch.zeros(b, dtype=torch.bool, device=device)
    if flag is None:
        return torch.ones(b, dtype=torch.bool, device=device)
    return flag.to(device=device, dtype=torch.bool).reshape(b)


class FusionDetector(Detector):
    """Audio-visual detector fusing the video and audio parts (and optionally lip sync).

    Args:
        contract: data contract.
        video: :class:`~veracity.models.video.VideoBranch` arguments.
        audio: :class:`~veracity.models.audio.AudioBranch` arguments.
        fusion: ``"xattn"`` (gated cross-modal attention) or ``"concat"``.
        dim: fusion width (both modalities are projected to it).
        heads: attention heads of the cross-attention.
        modality_dropout: training only: per sample, drop the video with this probability,
            else the audio with this probability (never both, and only when both are there).
        sync: :class:`~veracity.models.lipsync.SyncHead` arguments (``True``: its defaults),
            or ``False`` for no sync head (not ``None``: the factory drops ``None`` overrides).
        hidden: width of the fusion head.
        dropout: in the attention and the head.
    """

    modality = "av"

    def __init__(self, contract: DataContract, video: dict[str, Any] | None = None,
                 audio: dict[str, Any] | None = None, fusion: str = "xattn", dim: int = 128,
                 heads: int = 4, modality_dropout: float = 0.2, sync: dict[str, Any] | bool = False,
                 hidden: int = 128, dropout: float = 0.1):
        cfg = config_of(locals())
        super().__init__(contract)
        self.config = cfg
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {modality_dropout}")
        self.fusion, self.modality_dropout = fusion, modality_dropout
        self.video = VideoBranch(contract, **(video or {}))
        self.audio = AudioBranch(contract, **(audio or {}))
        self.video_head = nn.Linear(self.video.dim, 1)
        self.audio_head = nn.Linear(self.audio.dim, 1)
        self.v_proj = nn.Linear(self.video.dim, dim)
        self.a_proj = nn.Linear(self.audio.dim, dim)
        self.missing_video = nn.Parameter(torch.randn(dim) * 0.02)
        self.missing_audio = nn.Parameter(torch.randn(dim) * 0.02)
        head_in = 2 * dim
        if fusion == "xattn":
            self.q_norm, self.kv_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.xattn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.gate = nn.Linear(2 * dim, dim)
            self.fused_pool = AttentionPool(dim)
            head_in += dim
        self.frame_head = nn.Linear(dim, 1)
        self.sync: SyncHead | None = None
        if sync:
            self.sync = SyncHead(contract, **(sync if isinstance(sync, dict) else {}))
            self.missing_sync = nn.Parameter(torch.zeros(self.sync.n_features))
            head_in += self.sync.n_features + 1  # + the sync logit itself
        self.head = mlp_head(head_in, hidden, dropout)

    def parts(self) -> dict[str, nn.Module]:
        """The video and audio branches, and the sync head when there is one."""
        out: dict[str, nn.Module] = {"video": self.video, "audio": self.audio}
        if self.sync is not None:
            out["sync"] = self.sync
        return out

    def drop_modalities(self, vp: torch.Tensor, ap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality dropout: presence flags with random modalities removed (training only).

        Args:
            vp: (B,) bool video present.
            ap: (B,) bool audio present.

        Returns:
            The effective (video, audio) presence; unchanged in eval mode or with p = 0.
        """
        p = self.modality_dropout
        if not self.training or p <= 0:
            return vp, ap
        r = torch.rand(vp.shape[0], 2, device=vp.device)
        both = vp & ap  # dropping the only modality a sample has would leave nothing to learn from
        dv = (r[:, 0] < p) & both
        da = (r[:, 1] < p) & both & ~dv
        return vp & ~dv, ap & ~da

    def forward(self, batch: Batch) -> DetectorOutput:
        """Score a batch; either modality may be absent (None, or flagged per sample)."""
        b = batch.size
        dev = self.missing_video.device
        has_v, has_a = batch.video is not None, batch.audio is not None
        if not (has_v or has_a):
            raise ValueError("batch has neither video nor audio")
        vp = _presence(batch.video_present, has_v, b, dev)
        ap = _presence(batch.audio_present, has_a, b, dev)
        vp, ap = self.drop_modalities(vp, ap)
        aux: dict[str, torch.Tensor] = {}
        t = batch.video.shape[1] if has_v else self.contract.frames_per_window
        miss_v = self.missing_video.expand(b, t, -1)
        if has_v:
            v_tok, v_pool = self.video(batch.video, batch.flow)
            aux["video"] = self.video_head(v_pool).squeeze(-1)
            v_tok = torch.where(vp[:, None, None], self.v_proj(v_tok), miss_v)
            v_pool = torch.where(vp[:, None], self.v_proj(v_pool), self.missing_video.expand(b, -1))
        else:
            v_tok, v_pool = miss_v, self.missing_video.expand(b, -1)
        if has_a:
            a_tok, a_pool = self.audio(batch.audio, batch.vad)
            aux["audio"] = self.audio_head(a_pool).squeeze(-1)
            a_tok = torch.where(ap[:, None, None], self.a_proj(a_tok),
                                self.missing_audio.expand(b, a_tok.shape[1], -1))
            a_pool = torch.where(ap[:, None], self.a_proj(a_pool), self.missing_audio.expand(b, -1))
        else:
            a_tok, a_pool = self.missing_audio.expand(b, 1, -1), self.missing_audio.expand(b, -1)

        parts = [v_pool, a_pool]
        if self.fusion == "xattn":
            q = self.q_norm(v_tok)
            kv = self.kv_norm(a_tok)
            ctx, _ = self.xattn(q, kv, kv, need_weights=False)
            gate = torch.sigmoid(self.gate(torch.cat([v_tok, ctx], dim=-1)))
            tokens = v_tok + gate * ctx
            parts.insert(0, self.fused_pool(tokens))
        else:
            tokens = v_tok
        frame_scores = self.frame_head(tokens).squeeze(-1)
        if self.sync is not None:
            unknown = self.missing_sync.expand(b, -1)
            if has_v and has_a:
                s_logit, _, s_feat = self.sync(batch.video, batch.flow, batch.audio)
                aux["sync"] = s_logit
                both = (vp & ap)[:, None]
                s_feat = torch.cat([torch.where(both, s_feat, unknown),
                                    torch.where(both, s_logit[:, None], torch.zeros_like(s_logit[:, None]))], dim=-1)
            else:
                s_feat = torch.cat([unknown, unknown.new_zeros(b, 1)], dim=-1)
            # The sync head's own verdict goes in as well: a warm-started head hands the
            # fusion a calibrated scalar it would otherwise have to re-learn from features.
            parts.append(s_feat)
        features = torch.cat(parts, dim=-1)
        return DetectorOutput.from_logits(self.head(features).squeeze(-1), frame_scores=frame_scores,
                                          features=features, aux=aux)

    def checkpoint_overrides(self, path: Path) -> dict[str, Any]:
        """A wav2vec2 checkpoint directory fixes the audio encoder's architecture."""
        cfg = self.audio.checkpoint_config(path, dict(self.config.get("audio") or {}))
        return {} if cfg is None else {"audio": cfg}

    def load_backbone(self, path: Path) -> None:
        """Load a wav2vec2 directory into the audio part, anything else into the video backbone."""
        if wav2vec2_config_from_dir(path) is not None:
            self.audio.load_pretrained(path)
        else:
            self.video.frames.load_backbone(path)


# ------------------------------------------------------------------------------ variants

_MERGE = ("video", "audio", "sync")
# The same architecture as the video_specialist variant, so the fusion model can start from it.
AV_VIDEO = dict(backbone="resnet10t", backbone_kwargs=NARROW_RESNET, use_flow=True, highpass=True,
                highpass_norm=True, frame_stride=2, temporal="tconv", temporal_layers=2, dim=128)
AV_AUDIO = dict(encoder="logmel", encoder_kwargs=LOGMEL, dim=128)
TINY_VIDEO = dict(backbone="resnet10t", backbone_kwargs=TINY_RESNET, use_flow=True, highpass=True,
                  highpass_norm=True, temporal="tconv",
                  temporal_layers=1, dim=16)
TINY_AUDIO = dict(encoder="logmel", encoder_kwargs=dict(n_mels=32, channels=[8, 16]), dim=16)


@register_detector
def av_fusion(contract: DataContract, **overrides: Any) -> FusionDetector:
    """Video specialist + log-mel audio, gated cross-modal attention + lip-sync head (default AV member)."""
    return build(FusionDetector, contract, dict(video=AV_VIDEO, audio=AV_AUDIO, fusion="xattn", dim=128,
                                                heads=4, sync=LIPSYNC), overrides, merge=_MERGE)


@register_detector
def av_fusion_concat(contract: DataContract, **overrides: Any) -> FusionDetector:
    """Video specialist + log-mel audio, late fusion by concatenation (no sync head)."""
    return build(FusionDetector, contract, dict(video=AV_VIDEO, audio=AV_AUDIO, fusion="concat", dim=128,
                                                sync=False), overrides, merge=_MERGE)


@register_detector
def tiny_fusion(contract: DataContract, **overrides: Any) -> FusionDetector:
    """Tiny gated cross-attention fusion with a lip-sync head (tests)."""
    return build(FusionDetector, contract, dict(video=TINY_VIDEO, audio=TINY_AUDIO, fusion="xattn", dim=16,
                                                heads=2, sync=TINY_LIPSYNC, hidden=16), overrides, merge=_MERGE)


@register_detector
def tiny_fusion_concat(contract: DataContract, **overrides: Any) -> FusionDetector:
    """Tiny concatenation fusion without sync head (tests)."""
    return build(FusionDetector, contract, dict(video=TINY_VIDEO, audio=TINY_AUDIO, fusion="concat", dim=16,
                                                sync=False, hidden=16), overrides, merge=_MERGE)
