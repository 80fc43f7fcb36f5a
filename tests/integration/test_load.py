"""Load on the real server: 16 concurrent clients over /analyze, /jobs and /check_frame_batch.

Bounded in time and count, loopback only (``serving/loadgen.py``). Nothing may fail: no
transport error, no 5xx, no 4xx on valid input, and every job accepted ends ``done``.
The default run lasts 20 s; the ``slow`` one three minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit import KEY, Server, clip_frames

from serving.loadgen import run_load

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("seconds", [20, pytest.param(180, marks=pytest.mark.slow)])
def test_sixteen_clients_get_no_error_and_lose_no_job(service: Server, tiny_corpus: Path, seconds: int) -> None:
    videos = sorted((tiny_corpus / "videos").glob("*.mp4"))[:8]
    result = run_load(service.url, clips=[v.read_bytes() for v in videos], frames=clip_frames(videos[0]),
                      clients=16, seconds=seconds, max_requests=40 * seconds, headers={"X-API-Key": KEY},
                      job_timeout_s=240)
    s = result.summary()
    assert s["errors"] == 0, s["error_samples"]
    assert s["jobs_lost"] == 0 and s["jobs_done"] == s["jobs_submitted"] > 0, result.jobs_lost[:5]
    assert set(s["routes"]) == {"analyze", "jobs", "frames"}
    assert all(r["n"] > 0 and r["p95_s"] >= r["p50_s"] > 0 for r in s["routes"].values())
    print(s)  # the p95 latencies, for the record (pytest -s)
