"""The monitor's read of the log: GX checks every row, names the rows and files at fault, loses none."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import monitorkit as kit
import pytest

from monitoring.window import WindowError, read_window
from veracity.requestlog import COLUMNS, CURRENT_NAME, RequestLog


def _foreign_file(path: Path, batch: list[dict]) -> None:
    """Rows as a careless writer would store them: no STRICT table, any type in any column."""
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE requests ({', '.join(n for n, _ in COLUMNS)})")
    names = [n for n, _ in COLUMNS]
    con.executemany(f"INSERT INTO requests VALUES ({', '.join('?' for _ in names)})",
                    [[r[n] for n in names] for r in batch])
    con.commit()
    con.close()


def test_wrong_types_and_ranges_are_reported_by_row_and_every_row_is_accounted_for(tmp_path: Path) -> None:
    batch = kit.rows(n=12, seed=1)
    for r in batch:  # what the writer would have stored
        r["time"] = r["time"].strftime("%Y-%m-%dT%H:%M:%S.000Z")
        r["members"] = '{"audio": 0.2, "video": 0.3}'
        r["modalities"] = "{}"
    batch[3]["width"] = "wide"  # a wrong type
    batch[5]["probability"] = 1.7  # out of range
    batch[7]["members"] = "not json"
    batch[9]["time"] = "yesterday"  # cannot be placed in any window
    _foreign_file(tmp_path / "requests-20260301T000000.000000Z.sqlite", batch)
    win = read_window(tmp_path)
    assert win.read == 12 and len(win.rows) == 8 and win.read == len(win.rows) + len(win.at_fault)
    name = "requests-20260301T000000.000000Z.sqlite"
    assert set(win.at_fault) == {f"{name}#{i + 1}" for i in (3, 5, 7, 9)}
    assert win.at_fault[f"{name}#4"] == ["a value of the wrong type for its column"]
    assert any("probability outside" in w for w in win.at_fault[f"{name}#6"])
    assert not win.validation.success
    assert any("width" in r.describe() for r in win.validation.failed)  # the offending column is named
    assert win.rows["width"].eq(128).all()


def test_a_truncated_or_foreign_file_is_skipped_and_named_and_the_rest_is_read(tmp_path: Path) -> None:
    RequestLog(tmp_path).append(kit.rows(n=300, seed=2))
    rotated = RequestLog(tmp_path).rotate(force=True)
    RequestLog(tmp_path).append(kit.rows(n=5, seed=3, start=kit.T0 + timedelta(days=1)))
    data = rotated.read_bytes()
    broken = tmp_path / "requests-20250101T000000.000000Z.sqlite"
    broken.write_bytes(data[: len(data) // 2])  # a copy cut short
    (tmp_path / "requests-20240101T000000.000000Z.sqlite").write_bytes(b"not a database" * 100)
    win = read_window(tmp_path)
    assert set(win.skipped) == {str(broken), str(tmp_path / "requests-20240101T000000.000000Z.sqlite")}
    assert len(win.rows) == 305 and not win.at_fault and win.validation.success
    last = read_window(tmp_path, since=kit.T0 + timedelta(days=1), last=3)
    assert last.rows["request_id"].tolist() == ["r3-2", "r3-3", "r3-4"]
    with pytest.raises(WindowError, match="no request log"):
        read_window(tmp_path / "nowhere")
    assert (tmp_path / CURRENT_NAME).is_file()
