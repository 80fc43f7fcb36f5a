"""Tests of veracity.requestlog: rows from reports, the SQLite files, rotation, reading back.

Spawned workers import this module: it imports neither pandas nor the analyzer at the top.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from veracity.requestlog import (
    COLUMNS,
    CURRENT_NAME,
    GATE_NAME,
    LOCK_NAME,
    PERSON_FACTS,
    SCHEMA_VERSION,
    RequestLog,
    RequestLogError,
    log_files,
    read_request_log,
    rows_from_report,
)

SHA = "ab" * 32
PRIVATE = "alice-private-upload"  # stands for anything user-identifying in a path or message
T0 = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
MEDIA = {"duration_s": 4.0, "fps": 25.0, "width": 96, "height": 80, "rotation": 90, "has_audio": True,
         "audio_s": 3.9, "n_frames": 100, "face_ratio": 0.75, "n_tracks": 2, "speech_ratio": 0.5,
         "status": "ok", "warning": f"odd timestamps in /uploads/{PRIVATE}/clip.mp4"}


def _member(p: float, modality: str = "video") -> dict:
    return {"modality": modality, "logit": 0.0, "probability": p}


def _two_person_report():
    # Imported here: spawned workers import this module and need neither torch nor the analyzer.
    from veracity.analyzer import Report

    persons = [
        {"track": 0, "verdict": "REAL", "probability": 0.1,
         "members": {"vid": _member(0.12), "aud": _member(0.2, "audio")},
         "modalities": {"video": 0.12, "audio": 0.2}, "timeline": [{"start_s": 0.0}]},
        {"track": 3, "verdict": "FAKE", "probability": 0.93,
         "members": {"vid": _member(0.95), "aud": _member(0.6, "audio")},
         "modalities": {"video": 0.95, "audio": 0.6}, "timeline": [{"start_s": 0.0}]},
    ]
    return Report(path=f"/uploads/{PRIVATE}/clip.mp4", verdict="FAKE", probability=0.93,
                  message=f"fake: /uploads/{PRIVATE}/clip.mp4", members=persons[1]["members"],
                  modalities=persons[1]["modalities"], person=3, persons=persons, media=dict(MEDIA),
                  bundle={"sha256": SHA, "path": f"/models/{PRIVATE}", "members": ["vid", "aud"]})


def _abstain_report():
    from veracity.analyzer import Report

    return Report(path=f"/uploads/{PRIVATE}/dark.mp4", verdict="ABSTAIN", probability=None, reason="no_face",
                  message=f"no face in /uploads/{PRIVATE}/dark.mp4", media=dict(MEDIA), bundle={"sha256": SHA})


def _row(i: int, at: datetime, request_id: str | None = None, members: dict | None = None) -> dict:
    report = {"verdict": "REAL", "probability": i / 1000, "persons": [], "media": MEDIA,
              "members": members if members is not None else {"vid": i / 1000},
              "modalities": {"video": i / 1000}, "bundle": {"sha256": SHA}}
    return rows_from_report(report, request_id=request_id or f"req-{i}", endpoint="analyze",
                            latency_s=0.5, at=at)[0]


# --------------------------------------------------------------------------- rows


def test_rows_one_per_person_with_that_persons_scores() -> None:
    rows = rows_from_report(_two_person_report(), request_id="rid-1", endpoint="analyze", latency_s=1.2345, at=T0)
    assert [list(r) for r in rows] == [[name for name, _ in COLUMNS]] * 2
    by_person = {r["person"]: r for r in rows}
    assert set(by_person) == {0, 3}
    assert (by_person[0]["verdict"], by_person[0]["probability"]) == ("REAL", 0.1)
    assert (by_person[3]["verdict"], by_person[3]["probability"]) == ("FAKE", 0.93)
    assert by_person[0]["members"] == {"vid": 0.12, "aud": 0.2}
    assert by_person[3]["modalities"] == {"video": 0.95, "audio": 0.6}
    for r in rows:
        assert r["time"] == "2026-11-21T10:00:00.000Z"
        assert (r["request_id"], r["endpoint"], r["bundle_sha256"]) == ("rid-1", "analyze", SHA)
        assert r["latency_ms"] == pytest.approx(1234.5)
        assert r["reason"] is None and r["ood_score"] is None
        assert {k: r[k] for k in ("duration_s", "fps", "width", "height", "rotation", "has_audio", "audio_s",
                                  "n_frames", "face_ratio", "n_tracks", "speech_ratio")} == {
            "duration_s": 4.0, "fps": 25.0, "width": 96, "height": 80, "rotation": 90, "has_audio": 1,
            "audio_s": 3.9, "n_frames": 100, "face_ratio": 0.75, "n_tracks": 2, "speech_ratio": 0.5}


def test_abstain_is_one_row_without_person_or_probability() -> None:
    report = _abstain_report()
    report.probability, report.person = 0.7, 2  # stray values are never logged for an ABSTAIN
    rows = rows_from_report(report, request_id="rid-2", endpoint="analyze", latency_s=0.2)
    assert len(rows) == 1
    (r,) = rows
    assert (r["verdict"], r["reason"], r["person"], r["probability"]) == ("ABSTAIN", "no_face", None, None)
    assert r["members"] == {} and r["modalities"] == {}
    assert (r["width"], r["n_tracks"]) == (96, 2)
    assert datetime.fromisoformat(r["time"].replace("Z", "+00:00")) - datetime.now(UTC) < timedelta(seconds=5)


def test_rows_and_files_hold_no_path_or_message(tmp_path: Path) -> None:
    rows = rows_from_report(_two_person_report(), request_id="r", endpoint="analyze", latency_s=1.0)
    abstain = _abstain_report()
    abstain.reason = f"could not open /uploads/{PRIVATE}"  # free text is not a reason code
    rows += rows_from_report(abstain, request_id="r", endpoint="analyze", latency_s=1.0)
    assert all("path" not in r and "message" not in r and "warning" not in r for r in rows)
    assert PRIVATE not in repr(rows)
    assert rows[-1]["reason"] == "other"
    RequestLog(tmp_path).append(rows)
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"no_face" not in stored and b"analyze" in stored  # the bytes checked are the rows' bytes
    assert PRIVATE.encode() not in stored


def test_rows_refuse_a_bad_verdict_and_append_refuses_unknown_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verdict"):
        rows_from_report({"verdict": "MAYBE"}, request_id="r", endpoint="e", latency_s=0.0)
    row = _row(1, T0)
    rlog = RequestLog(tmp_path)
    with pytest.raises(ValueError, match="path"):
        rlog.append([row, {**row, "path": "/uploads/x.mp4"}])
    with pytest.raises(ValueError, match="request_id"):
        rlog.append([row, {**row, "request_id": None}])
    with pytest.raises(ValueError, match="time"):
        rlog.append([row, {**row, "time": "21/11/2026 10:00"}])  # would break the time filters
    assert read_request_log(tmp_path).empty  # the valid row was not written either
    rlog.append([{**row, "time": T0 + timedelta(hours=1)}])  # a datetime is written in the one format
    assert read_request_log(tmp_path, since=T0 + timedelta(minutes=59))["request_id"].tolist() == ["req-1"]


# --------------------------------------------------------------------------- files


def test_round_trip_expands_members_and_modalities(tmp_path: Path) -> None:
    rlog = RequestLog(tmp_path)
    n = rlog.append(rows_from_report(_two_person_report(), request_id="a", endpoint="analyze", latency_s=1.0,
                                     at=T0))
    n += rlog.append(rows_from_report(_abstain_report(), request_id="b", endpoint="analyze", latency_s=0.1,
                                      at=T0 + timedelta(seconds=1)))
    n += rlog.append([_row(7, T0 + timedelta(seconds=2), members={"other": 0.4})])
    assert n == 4
    df = read_request_log(tmp_path)
    assert len(df) == 4 and df.attrs["skipped"] == []
    assert "members" not in df.columns and "modalities" not in df.columns
    assert {"p_vid", "p_aud", "p_other", "m_video", "m_audio"} <= set(df.columns)
    assert list(df["request_id"]) == ["a", "a", "b", "req-7"]
    assert list(df["p_vid"].iloc[:2]) == [0.12, 0.95]
    assert list(df["m_audio"].iloc[:2]) == [0.2, 0.6]
    assert df["p_vid"].iloc[2:].isna().all() and df["p_other"].iloc[3] == 0.4
    assert list(df["person"].astype(object).where(df["person"].notna(), None)) == [0, 3, None, None]
    assert df["probability"].isna().tolist() == [False, False, True, False]
    assert df["reason"].iloc[2] == "no_face"
    assert str(df["time"].dtype) == "datetime64[ns, UTC]"
    assert df["time"].iloc[2] == T0 + timedelta(seconds=1)
    assert df["has_audio"].dtype == "boolean" and df["has_audio"].all()
    assert df["width"].dtype == "Int64" and int(df["width"].iloc[0]) == 96
    assert df["ood_score"].isna().all()


def test_file_is_wal_versioned_and_append_only(tmp_path: Path) -> None:
    RequestLog(tmp_path).append([_row(1, T0)])
    con = sqlite3.connect(tmp_path / CURRENT_NAME)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE requests SET verdict = 'FAKE'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("DELETE FROM requests")
    finally:
        con.close()
    assert read_request_log(tmp_path)["verdict"].tolist() == ["REAL"]


def test_a_file_of_a_newer_schema_is_not_written(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / CURRENT_NAME)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(RequestLogError, match="schema version"):
        RequestLog(tmp_path).append([_row(1, T0)])


def test_since_until_last_windows(tmp_path: Path) -> None:
    rlog = RequestLog(tmp_path)
    # Appended out of time order: reading returns time order whatever the order of appends.
    for i in [3, 0, 4, 1, 2, 9, 5, 6, 8, 7]:
        rlog.append([_row(i, T0 + timedelta(minutes=i))])
    ids = lambda df: [int(r.split("-")[1]) for r in df["request_id"]]  # noqa: E731
    assert ids(read_request_log(tmp_path)) == list(range(10))
    assert ids(read_request_log(tmp_path, since=T0 + timedelta(minutes=7))) == [7, 8, 9]  # inclusive
    assert ids(read_request_log(tmp_path, until=T0 + timedelta(minutes=2))) == [0, 1]  # exclusive
    assert ids(read_request_log(tmp_path, since="2026-11-21T10:03:00", until="2026-11-21T10:05:00.001Z")) == [3, 4, 5]
    naive = datetime(2026, 11, 21, 10, 8)  # naive means UTC
    half_ms = timedelta(microseconds=500)  # rows are stored to the millisecond: bounds stay exact
    assert ids(read_request_log(tmp_path, since=T0 + timedelta(minutes=7) + half_ms)) == [8, 9]
    assert ids(read_request_log(tmp_path, until=T0 + timedelta(minutes=2) + half_ms)) == [0, 1, 2]
    assert ids(read_request_log(tmp_path, until=T0 + timedelta(minutes=2) - half_ms)) == [0, 1]
    assert ids(read_request_log(tmp_path, since=naive)) == [8, 9]
    assert ids(read_request_log(tmp_path, last=3)) == [7, 8, 9]
    assert ids(read_request_log(tmp_path, until=T0 + timedelta(minutes=5), last=2)) == [3, 4]
    assert ids(read_request_log(tmp_path, last=50)) == list(range(10))
    assert read_request_log(tmp_path, last=0).empty
    assert read_request_log(tmp_path / "never-written").empty


def test_rotation_keeps_the_newest_files_and_reads_across_them_in_order(tmp_path: Path) -> None:
    rlog = RequestLog(tmp_path, max_bytes=20 * 1024, keep=2)
    n = 201
    for start in range(0, n, 10):  # the last append leaves one row in the current file
        rlog.append([_row(i, T0 + timedelta(seconds=i)) for i in range(start, min(start + 10, n))])
    rotated = sorted(tmp_path.glob("requests-*.sqlite"))
    assert len(rotated) == 2  # more were made (see below): the oldest were deleted
    assert not list(tmp_path.glob("requests-*.sqlite-*"))  # rotated files are self-contained
    for p in rotated:
        con = sqlite3.connect(p)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        con.close()
    assert log_files(tmp_path) == [*rotated, tmp_path / CURRENT_NAME]
    df = read_request_log(tmp_path)
    got = [int(r.split("-")[1]) for r in df["request_id"]]
    assert got[0] > 0 and got == list(range(got[0], n))  # a contiguous, ordered suffix of what was written
    assert df.attrs["files"] == [str(p) for p in log_files(tmp_path)]
    assert df["file"].tolist() == sorted(df["file"], key=[p.name for p in log_files(tmp_path)].index)
    assert df["file"].nunique() == 3
    assert (df["file"] == CURRENT_NAME).sum() < got[0]  # each file holds fewer rows than were dropped


def test_a_rotation_that_cannot_happen_loses_nothing_and_is_retried(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    rlog = RequestLog(tmp_path, max_bytes=16 * 1024)
    rlog.append([_row(0, T0)])
    outside = sqlite3.connect(tmp_path / CURRENT_NAME)  # e.g. someone's sqlite3 shell
    try:
        outside.execute("SELECT count(*) FROM requests").fetchone()
        with caplog.at_level(logging.WARNING, logger="veracity.requestlog"):
            rlog.append([_row(i, T0 + timedelta(seconds=i)) for i in range(1, 80)])  # past max_bytes
        assert not list(tmp_path.glob("requests-*.sqlite"))
        assert any("rotation" in r.getMessage() and "retried" in r.getMessage() for r in caplog.records)
    finally:
        outside.close()
    rlog.append([_row(80, T0 + timedelta(seconds=80))])
    assert len(list(tmp_path.glob("requests-*.sqlite"))) == 1
    assert sorted(read_request_log(tmp_path)["request_id"], key=lambda r: int(r[4:])) == [f"req-{i}" for i in range(81)]


def _append_worker(directory: str, worker: int, n: int, barrier) -> None:  # noqa: ANN001 - a multiprocessing barrier
    rlog = RequestLog(directory, max_bytes=16 * 1024, keep=10_000)
    barrier.wait()
    for i in range(n):
        rlog.append([_row(i, datetime.now(UTC), request_id=f"w{worker}-{i}")])


def test_two_processes_append_concurrently_without_losing_rows(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    n = 60
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_append_worker, args=(str(tmp_path), w, n, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    df = read_request_log(tmp_path)
    assert df.attrs["skipped"] == []
    assert len(list(tmp_path.glob("requests-*.sqlite"))) >= 3  # rotation kept up while both appended
    assert sorted(df["request_id"]) == sorted(f"w{w}-{i}" for w in range(2) for i in range(n))


def test_a_waiting_rotation_goes_before_new_appends(tmp_path: Path) -> None:
    # flock grants shared locks past a waiting exclusive one: without the gate, appends that
    # overlap without pause (several busy workers) would postpone rotation indefinitely.
    rlog = RequestLog(tmp_path)
    rlog.append([_row(0, T0)])
    in_flight = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
    fcntl.flock(in_flight, fcntl.LOCK_SH)  # an append of another worker, not finished yet
    rotated: list[Path | None] = []
    rotation = threading.Thread(target=lambda: rotated.append(rlog.rotate(force=True)))
    rotation.start()
    gate = os.open(tmp_path / GATE_NAME, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 10
        while True:  # until the rotation holds the gate
            try:
                fcntl.flock(gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(gate, fcntl.LOCK_UN)
            except BlockingIOError:
                break
            assert time.monotonic() < deadline, "the rotation never took the gate"
            time.sleep(0.005)
        late = threading.Thread(target=rlog.append, args=([_row(1, T0 + timedelta(seconds=1))],))
        late.start()
        late.join(0.3)
        assert late.is_alive() and rotation.is_alive()  # the new append waits behind the rotation
    finally:
        os.close(in_flight)
        os.close(gate)
    rotation.join(10)
    late.join(10)
    assert rotated[0] is not None
    df = read_request_log(tmp_path)
    assert dict(zip(df["request_id"], df["file"], strict=True)) == {"req-0": rotated[0].name, "req-1": CURRENT_NAME}


def test_damaged_files_are_skipped_and_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rlog = RequestLog(tmp_path)
    rlog.append([_row(i, T0 + timedelta(seconds=i)) for i in range(300)])
    full = rlog.rotate(force=True)
    assert full is not None and full.stat().st_size > 16 * 4096
    rlog.append([_row(1000, T0 + timedelta(hours=1))])
    # A truncated copy and a file of garbage, both named like rotated files (older than the real one).
    truncated = tmp_path / "requests-20000101T000000.000000Z.sqlite"
    shutil.copy(full, truncated)
    with open(truncated, "r+b") as f:
        f.truncate(full.stat().st_size // 2)
    garbage = tmp_path / "requests-20000102T000000.000000Z.sqlite"
    garbage.write_bytes(b"this is not a database\n" * 200)
    empty = tmp_path / "requests-20000103T000000.000000Z.sqlite"
    empty.touch()
    with caplog.at_level(logging.WARNING, logger="veracity.requestlog"):
        df = read_request_log(tmp_path)
    assert df.attrs["skipped"] == [str(truncated), str(garbage), str(empty)]
    assert len(df) == 301 and df["request_id"].iloc[-1] == "req-1000"
    current = tmp_path / CURRENT_NAME
    current.write_bytes(b"garbage" * 1000)  # the current file too (it is read differently)
    with caplog.at_level(logging.WARNING, logger="veracity.requestlog"):
        df = read_request_log(tmp_path)
    assert df.attrs["skipped"] == [str(truncated), str(garbage), str(empty), str(current)]
    assert len(df) == 300 and df.attrs["files"] == [str(full)]
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for p in (truncated, garbage, empty, current):
        assert str(p) in warned


def test_a_v1_file_is_rotated_aside_and_read_back_as_the_champions_answers(tmp_path: Path) -> None:
    # A file as version 1 wrote it: without judged, role, model, agree (v2) and the v3 facts.
    v1 = [(n, t) for n, t in COLUMNS if n not in ("judged", "role", "model", "agree", "rms_dbfs", *PERSON_FACTS)]
    con = sqlite3.connect(tmp_path / CURRENT_NAME)
    con.execute(f"CREATE TABLE requests ({', '.join(f'{n} {t}' for n, t in v1)})")
    old = {k: v for k, v in _row(1, T0).items() if k in dict(v1)}
    old["members"], old["modalities"] = "{}", "{}"
    con.execute(f"INSERT INTO requests ({', '.join(old)}) VALUES ({', '.join('?' for _ in old)})", list(old.values()))
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    rlog = RequestLog(tmp_path)
    rlog.append([_row(2, T0 + timedelta(minutes=1))])  # no error, nothing lost
    assert len(log_files(tmp_path)) == 2
    con = sqlite3.connect(tmp_path / CURRENT_NAME)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    con.close()
    df = read_request_log(tmp_path)
    assert df["request_id"].tolist() == [old["request_id"], _row(2, T0)["request_id"]]
    assert df["role"].tolist() == ["served", "served"] and df["model"].tolist() == ["champion", "champion"]


def test_shadow_rows_carry_role_model_agreement_and_what_judged(tmp_path: Path) -> None:
    report = {**_two_person_report().to_dict(), "judged": ["video"]}
    served = rows_from_report(report, request_id="r1", endpoint="analyze", latency_s=0.1, at=T0)
    shadow = rows_from_report(report, request_id="r1", endpoint="analyze", latency_s=0.1, at=T0,
                              role="shadow", model="challenger", agree=False)
    assert {r["role"] for r in served} == {"served"} and {r["agree"] for r in served} == {None}
    assert {(r["role"], r["model"], r["agree"], r["judged"]) for r in shadow} == {("shadow", "challenger", 0, "video")}
    with pytest.raises(ValueError, match="role"):
        rows_from_report(report, request_id="r1", endpoint="analyze", latency_s=0.1, role="canary")
    RequestLog(tmp_path).append(served + shadow)
    df = read_request_log(tmp_path)
    assert df.groupby("role")["agree"].apply(lambda s: s.isna().all()).to_dict() == {"served": True, "shadow": False}
