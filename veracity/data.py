"""Model windows streamed from extracted feature records.

A window is ``frames_per_window`` consecutive crops of a clip's main face track, the
matching stretch of audio (cut by the crops' true timestamps) and its voice activity.
Training samples random windows per clip each epoch; evaluation covers every clip with
evenly spaced windows whose scores are pooled back to the clip (:mod:`veracity.metrics`).

The window's shape comes from the data contract; the VAD mask's time step from the
records themselves (:meth:`veracity.features.ClipRecord.vad_hop_s`, stored by extraction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from veracity.contract import DataContract
from veracity.features import ClipRecord
from veracity.media.audio import hop_seconds
from veracity.models.base import Batch


@dataclass(frozen=True)
class ClipInfo:
    """One usable clip of the features index."""

    video_id: str
    record: Path
    label: int
    video_label: float
    audio_label: float
    method: str
    split: str
    has_audio: bool
    # Which face track the windows follow; None = the primary track (the main speaker).
    # The analyzer sets it to score every kept person of a clip separately.
    track: int | None = None


def load_clips(features: Path | str, splits: Sequence[str] | None = None,
               usable_statuses: Sequence[str] = ("ok",)) -> list[ClipInfo]:
    """Usable clips of a features directory, optionally restricted to some splits."""
    features = Path(features)
    index = pd.read_csv(features / "index.csv")
    index = index[index["status"].isin(list(usable_statuses))]
    if splits is not None:
        index = index[index["split"].isin(list(splits))]
    out = []
    for row in index.sort_values("video_id").itertuples():
        out.append(ClipInfo(
            video_id=str(row.video_id), record=features / str(row.record), label=int(row.label),
            video_label=float(row.video_label) if pd.notna(row.video_label) else float("nan"),
            audio_label=float(row.audio_label) if pd.notna(row.audio_label) else float("nan"),
            method=str(row.method), split=str(row.split),
            has_audio=str(row.has_audio).lower() == "true",
        ))
    return out


class WindowDataset(Dataset):
    """Windows of clips as dicts of tensors (collate with :func:`collate`).

    Args:
        clips: the clips (see :func:`load_clips`).
        contract: window length, fps, sample rate and normalisation.
        train: sample ``windows_per_clip`` random windows per clip (reshuffled each
            :meth:`set_epoch`); otherwise evenly spaced windows with ``eval_stride``.
        windows_per_clip: random windows per clip and epoch (training).
        eval_stride: frames between evaluation windows (default: half a window).
        transform: optional callable applied to each sample dict (augmentation).
        seed: base seed for window positions.
    """

    def __init__(self, clips: Sequence[ClipInfo], contract: DataContract, train: bool = False,
                 windows_per_clip: int = 2, eval_stride: int | None = None,
                 transform: Callable[[dict[str, Any], np.random.Generator], dict[str, Any]] | None = None,
                 seed: int = 0):
        self.clips = list(clips)
        self.contract = contract
        self.train = train
        self.windows_per_clip = windows_per_clip
        self.stride = eval_stride or max(1, contract.frames_per_window // 2)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self._records: dict[int, tuple[ClipRecord, np.ndarray]] = {}
        self._lengths = [self._rows(i).shape[0] for i in range(len(self.clips))]
        self.vad_hop_s = self._vad_hop()
        self._items = self._plan()

    def _vad_hop(self) -> float:
        """Seconds per VAD step of every window: the hop the records' masks were stored with.

        Clips without audio get an all-zero mask at the same step (one batch, one shape);
        with no mask at all, the step is the one extraction would use at the contract's rate.

        Raises:
            veracity.features.RecordFormatError: a mask without its stored hop.
            ValueError: records whose masks have different hops.
        """
        hops = {h for rec, _ in self._records.values() if (h := rec.vad_hop_s()) is not None}
        if len(hops) > 1:
            raise ValueError(f"feature records with different VAD hops {sorted(hops)} cannot share a "
                             "dataset; extract them with one version of `veracity extract`")
        return hops.pop() if hops else hop_seconds(self.contract.sample_rate)

    def _rows(self, i: int) -> np.ndarray:
        if i not in self._records:
            rec = ClipRecord(self.clips[i].record)
            self._records[i] = (rec, rec.track_crops(self.clips[i].track))
        return self._records[i][1]

    def _plan(self) -> list[tuple[int, int]]:
        t = self.contract.frames_per_window
        items: list[tuple[int, int]] = []
        rng = np.random.default_rng([self.seed, self.epoch])
        for i, n in enumerate(self._lengths):
            last = max(0, n - t)
            if self.train:
                items += [(i, int(s)) for s in rng.integers(0, last + 1, self.windows_per_clip)]
            else:
                starts = list(range(0, last + 1, self.stride)) or [0]
                if starts[-1] != last:
                    starts.append(last)  # cover the end of the clip too
                items += [(i, s) for s in starts]
        return items

    def set_epoch(self, epoch: int) -> None:
        """Draw new random windows (training) for ``epoch``."""
        self.epoch = epoch
        if self.train:
            self._items = self._plan()

    def __len__(self) -> int:
        return len(self._items)

    def item_clip(self, idx: int) -> ClipInfo:
        """The clip a dataset item comes from (for pooling window scores per clip)."""
        return self.clips[self._items[idx][0]]

    def item_start(self, idx: int) -> int:
        """The first frame (row of the clip's track) of a dataset item's window."""
        return self._items[idx][1]

    def item_length(self, idx: int) -> int:
        """How many real (not padded) frames a dataset item's window holds."""
        ci, start = self._items[idx]
        return max(0, min(self.contract.frames_per_window, self._lengths[ci] - start))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        ci, start = self._items[idx]
        clip = self.clips[ci]
        rows = self._rows(ci)
        rec = self._records[ci][0]
        c = self.contract
        sel = rows[start : start + c.frames_per_window]
        faces = np.asarray(rec.array("faces")[sel]) if len(sel) else np.zeros((0, c.face_size, c.face_size, 3), np.uint8)
        flow = rec.array("flow")
        flow = flow[sel] if len(sel) and flow.ndim == 4 else None
        if clip.track is None:
            video_present = bool(len(sel)) and rec.primary_track() is not None
        else:  # an explicit track is a face unless it is the centre-crop fallback (-1)
            video_present = bool(len(sel)) and clip.track >= 0
        wave = rec.array("audio")
        heard = clip.has_audio and len(wave) and len(sel)
        t0 = float(rec.array("times")[int(rec.array("crop_frame")[sel[0]])]) if heard else None
        sample = window_sample(faces, flow, c, wave=wave if heard else None, vad=rec.array("vad") if heard else None,
                               t0=t0, vad_hop_s=self.vad_hop_s)
        sample.update(video_present=video_present, audio_present=clip.has_audio, label=float(clip.label),
                      video_label=clip.video_label, audio_label=clip.audio_label, index=idx)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            sample = self.transform(sample, rng)
        return sample


def window_sample(faces: np.ndarray, flow: np.ndarray | None, contract: DataContract, *,
                  wave: np.ndarray | None, vad: np.ndarray | None, t0: float | None,
                  vad_hop_s: float) -> dict[str, Any]:
    """The model inputs of one window: its crops and flow, and the audio and voice activity
    from ``t0`` (the first crop's time) on.

    One place for both ways a window is cut: from a finished record
    (:class:`WindowDataset`) and from crops still being extracted (:mod:`veracity.stream`).

    Args:
        faces: (n, S, S, 3) uint8 crops, n <= ``frames_per_window`` (a short clip's last crop
            is repeated, with zero motion, to fill the window).
        flow: (n, s, s, 2) optical flow of the same rows, or None.
        contract: window length, sample rate and normalisation.
        wave: the clip's whole 16 kHz waveform (None: no audio, zeros).
        vad: the clip's voice-activity mask, one value per ``vad_hop_s``.
        t0: where the window's audio starts, in seconds (None: no audio).
        vad_hop_s: seconds per VAD step.

    Returns:
        ``video`` (normalised), ``flow``, ``audio`` and ``vad`` tensors.
    """
    c = contract
    t = c.frames_per_window
    flow = np.asarray(flow, dtype=np.float32) if flow is not None else None
    if len(faces) < t:  # short clip: repeat the last crop (and zero motion) to fill the window
        pad = t - len(faces)
        faces = np.concatenate([faces, np.repeat(faces[-1:] if len(faces) else
                                                 np.zeros((1, c.face_size, c.face_size, 3), np.uint8), pad, 0)])
        if flow is not None:
            flow = np.concatenate([flow, np.zeros((pad, *flow.shape[1:]), np.float32)])
    video = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(c.mean).view(1, 3, 1, 1)
    std = torch.tensor(c.std).view(1, 3, 1, 1)
    video = (video - mean) / std

    n_audio = c.audio_samples_per_window
    audio = np.zeros(n_audio, np.float32)
    mask = np.zeros(int(round(c.window_seconds / vad_hop_s)), bool)
    if wave is not None and t0 is not None:
        a0 = int(round(t0 * c.sample_rate))
        seg = np.asarray(wave[a0 : a0 + n_audio], dtype=np.float32)
        audio[: len(seg)] = seg
        if vad is not None:
            h0 = int(round(t0 / vad_hop_s))
            vseg = np.asarray(vad[h0 : h0 + len(mask)], dtype=bool)
            mask[: len(vseg)] = vseg
    return {
        "video": video,
        "flow": torch.from_numpy(flow).permute(0, 3, 1, 2) if flow is not None else None,
        "audio": torch.from_numpy(audio),
        "vad": torch.from_numpy(mask),
    }


def collate(samples: list[dict[str, Any]]) -> tuple[Batch, torch.Tensor]:
    """Stack samples into a :class:`Batch` plus the dataset indices (for pooling)."""
    def stack(key: str) -> torch.Tensor | None:
        vals = [s[key] for s in samples]
        return None if any(v is None for v in vals) else torch.stack(vals)

    def vec(key: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor([s[key] for s in samples], dtype=dtype)

    batch = Batch(
        video=stack("video"), flow=stack("flow"), audio=stack("audio"), vad=stack("vad"),
        video_present=vec("video_present", torch.bool), audio_present=vec("audio_present", torch.bool),
        label=vec("label", torch.float32), video_label=vec("video_label", torch.float32),
        audio_label=vec("audio_label", torch.float32),
    )
    return batch, vec("index", torch.long)
