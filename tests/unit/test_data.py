"""Windows streamed from feature records line up with the clip's frames and audio."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from veracity.config import ContractConfig, ExtractConfig
from veracity.data import WindowDataset, collate, load_clips
from veracity.extract import extract
from veracity.features import ClipRecord, RecordFormatError
from veracity.media.audio import EnergyVAD

CONTRACT = ContractConfig(fps=12.5, frames_per_window=8, face_size=32).build()


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


def _copy_records(clips: list, dest: Path, hop: float | None) -> list:
    """The clips' records copied under ``dest`` with the stored VAD hop set to ``hop`` (None: removed)."""
    out = []
    for clip in clips:
        rec = dest / clip.record.relative_to(clip.record.parents[2])
        shutil.copytree(clip.record, rec)
        meta = json.loads((rec / "meta.json").read_text())
        if hop is None:
            del meta["arrays"]["vad"]
        else:
            meta["arrays"]["vad"]["hop_s"] = hop
        (rec / "meta.json").write_text(json.dumps(meta))
        out.append(dataclasses.replace(clip, record=rec))
    return out


def test_vad_hop_comes_from_the_records(features: Path, tmp_path: Path) -> None:
    clips = load_clips(features, ["test"])[:2]
    # Extraction stores the hop its VAD ran at with every mask.
    assert {ClipRecord(c.record).vad_hop_s() for c in clips} == {EnergyVAD(CONTRACT.sample_rate).hop_s}
    assert WindowDataset(clips, CONTRACT)[0]["vad"].shape == (64,)  # 0.64 s of 10 ms hops
    # The dataset reads the step from the records (no restated constant): a record stored
    # at 20 ms gives masks of half the length, indexed at 20 ms.
    coarse = _copy_records(clips, tmp_path / "coarse", 0.02)
    ds = WindowDataset(coarse, CONTRACT)
    mask = np.load(coarse[0].record / "vad.npy")
    assert ds.vad_hop_s == 0.02 and ds[0]["vad"].shape == (32,)
    assert ds[0]["vad"].numpy().tolist() == mask[:32].tolist()  # the first window starts at t = 0
    with pytest.raises(ValueError, match="different VAD hops"):
        WindowDataset([clips[0], coarse[1]], CONTRACT)


def test_a_record_without_the_vad_hop_is_a_clear_error(features: Path, tmp_path: Path) -> None:
    old = _copy_records(load_clips(features, ["test"])[:1], tmp_path / "old", None)
    with pytest.raises(RecordFormatError, match="older `veracity extract`.*Re-run extraction"):
        WindowDataset(old, CONTRACT)
