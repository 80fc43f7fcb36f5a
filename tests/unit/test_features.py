"""Feature records: incremental .npy writing, atomic commit, memory-mapped reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veracity.features import (
    ClipRecord,
    NpyAppender,
    RecordFormatError,
    RecordWriter,
    map_rows_in_place,
    read_meta,
    record_dir,
)


def test_npy_appender_writes_a_loadable_array_row_by_row(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 255, (7, 4, 4, 3), dtype=np.uint8)
    with NpyAppender(tmp_path / "a.npy", (4, 4, 3), np.uint8) as app:
        app.append(rows[0])
        app.append(rows[1:5])
        app.append(rows[5:])
    loaded = np.load(tmp_path / "a.npy", mmap_mode="r")
    np.testing.assert_array_equal(loaded, rows)
    with NpyAppender(tmp_path / "s.npy", (), np.float64) as app:
        for v in (0.5, 1.5):
            app.append(np.float64(v))
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), [0.5, 1.5])


def test_npy_appender_rejects_wrong_row_shape(tmp_path: Path) -> None:
    app = NpyAppender(tmp_path / "a.npy", (3,), np.float32)
    with pytest.raises(ValueError, match="row shape"):
        app.append(np.zeros((2, 4)))
    app.close()
    assert np.load(tmp_path / "a.npy").shape == (0, 3)  # still a valid (empty) array


@pytest.mark.parametrize("block_rows", [1, 3, 7, 100])
def test_rows_are_rewritten_in_place_block_by_block(tmp_path: Path, block_rows: int) -> None:
    rows = np.random.default_rng(1).normal(size=(7, 2, 3)).astype(np.float32)
    with NpyAppender(tmp_path / "a.npy", (2, 3), np.float32) as app:
        app.append(rows)
    blocks: list[int] = []

    def double(block: np.ndarray) -> np.ndarray:
        blocks.append(len(block))
        return block * 2

    map_rows_in_place(tmp_path / "a.npy", double, block_rows)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), rows * 2)
    assert max(blocks) <= block_rows and sum(blocks) == 7
    np.save(tmp_path / "empty.npy", np.zeros((0,), np.float32))  # numpy's own header, no rows
    map_rows_in_place(tmp_path / "empty.npy", double, 4)
    assert np.load(tmp_path / "empty.npy").shape == (0,)


def test_record_is_invisible_until_committed_and_partial_is_replaced(tmp_path: Path) -> None:
    final = record_dir(tmp_path, "clip_a")
    w = RecordWriter(final)
    w.appender("times", (), np.float64).append(np.arange(3.0))
    assert read_meta(final) is None and not final.exists()
    # A crash leaves the partial directory behind; a new writer starts clean.
    w2 = RecordWriter(final)
    assert not (w2.tmp / "times.npy").exists()
    w2.appender("times", (), np.float64).append(np.arange(5.0))
    w2.save("vad", np.array([True, False]), hop_s=0.01)
    w2.commit({"status": "ok", "tracks": [{"track_id": 0, "n_frames": 5, "kept": True}]})
    rec = ClipRecord(final)
    assert rec.status == "ok"
    np.testing.assert_array_equal(rec.array("times"), np.arange(5.0))
    assert rec.array("missing_array").shape == (0,)
    assert not w2.tmp.exists()


def test_primary_track_and_fallback_rows(tmp_path: Path) -> None:
    final = record_dir(tmp_path, "two")
    w = RecordWriter(final)
    w.save("crop_track", np.array([0, 1, 0, 1, 1, -1], np.int16))
    w.commit({"status": "ok", "tracks": [
        {"track_id": 0, "n_frames": 2, "kept": True},
        {"track_id": 1, "n_frames": 3, "kept": True},
        {"track_id": 2, "n_frames": 9, "kept": False},  # spurious, dropped
    ]})
    rec = ClipRecord(final)
    assert rec.primary_track() == 1
    np.testing.assert_array_equal(rec.track_crops(), [1, 3, 4])
    np.testing.assert_array_equal(rec.track_crops(0), [0, 2])

    w = RecordWriter(record_dir(tmp_path, "none"))
    w.save("crop_track", np.array([-1, -1], np.int16))
    rec = ClipRecord(w.commit({"status": "no_face", "tracks": []}))
    assert rec.primary_track() is None
    np.testing.assert_array_equal(rec.track_crops(), [0, 1])


def test_record_dirs_are_bucketed_and_stable(tmp_path: Path) -> None:
    a, b = record_dir(tmp_path, "x1"), record_dir(tmp_path, "x1")
    assert a == b and a.parent.parent == tmp_path / "records" and len(a.parent.name) == 2


def test_vad_hop_is_stored_with_the_mask(tmp_path: Path) -> None:
    final = record_dir(tmp_path, "hop")
    w = RecordWriter(final)
    w.save("vad", np.zeros(7, bool), hop_s=0.02)
    w.commit({"status": "ok", "tracks": []})
    assert read_meta(final)["arrays"] == {"vad": {"hop_s": 0.02}}
    assert ClipRecord(final).vad_hop_s() == 0.02
    # No mask (a clip without audio): no hop to state.
    w = RecordWriter(record_dir(tmp_path, "silent"))
    assert ClipRecord(w.commit({"status": "no_audio", "tracks": []})).vad_hop_s() is None


def test_a_mask_without_its_hop_asks_for_re_extraction(tmp_path: Path) -> None:
    # What extraction wrote before the hop was stored: readers must not guess it.
    final = record_dir(tmp_path, "old")
    w = RecordWriter(final)
    w.save("vad", np.zeros(7, bool))
    w.commit({"status": "ok", "tracks": []})
    with pytest.raises(RecordFormatError, match=r"arrays\.vad\.hop_s.*veracity extract") as info:
        ClipRecord(final).vad_hop_s()
    assert str(tmp_path) in str(info.value)  # names the features directory to delete
