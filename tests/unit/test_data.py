"""Windows streamed from feature records line up with the clip's frames and audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from veracity.config import ExtractConfig
from veracity.contract import DataContract
from veracity.data import WindowDataset, collate, load_clips
from veracity.extract import extract

CONTRACT = DataContract(fps=12.5, frames_per_window=8, face_size=32)


@pytest.fixture(scope="module")
def features(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features")
    extract(ExtractConfig(workers=2, min_duration_s=0.5), CONTRACT, tiny_corpus / "manifest.csv", out)
    return out


def test_clips_by_split(features: Path) -> None:
    train = load_clips(features, ["train"])
    assert train and {c.split for c in train} == {"train"}
    assert len(load_clips(features)) == 42


def test_eval_windows_cover_each_clip_and_batch(features: Path) -> None:
    clips = load_clips(features, ["test"])
    ds = WindowDataset(clips, CONTRACT)
    covered = {ds.item_clip(i).video_id for i in range(len(ds))}
    assert covered == {c.video_id for c in clips}
    batch, idx = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch.video.shape == (4, 8, 3, 32, 32)
    assert batch.flow.shape == (4, 8, 2, 16, 16)
    assert batch.audio.shape == (4, CONTRACT.audio_samples_per_window)
    assert batch.vad.shape == (4, 64) and batch.vad.dtype == torch.bool
    assert batch.video_present.all() and batch.audio_present.all()
    assert torch.isfinite(batch.video).all() and abs(float(batch.video.mean())) < 1.5  # normalised
    assert idx.tolist() == [0, 1, 2, 3]


def test_audio_window_follows_frame_timestamps(features: Path) -> None:
    clip = load_clips(features, ["test"])[0]
    ds = WindowDataset([clip], CONTRACT, eval_stride=2)
    first, later = ds[0], ds[1]
    # The second window starts 2 frames (0.16 s) later: its audio is the first window's
    # audio shifted by 2560 samples.
    shift = int(round(2 / CONTRACT.fps * CONTRACT.sample_rate))
    np.testing.assert_allclose(later["audio"][: -shift].numpy(), first["audio"][shift:].numpy())


def test_training_windows_reshuffle_each_epoch(features: Path) -> None:
    ds = WindowDataset(load_clips(features, ["train"]), CONTRACT, train=True, windows_per_clip=3, seed=1)
    first = list(ds._items)
    assert len(ds) == 3 * len(ds.clips)
    ds.set_epoch(1)
    assert list(ds._items) != first
    ds.set_epoch(0)
    assert list(ds._items) == first  # deterministic per (seed, epoch)
