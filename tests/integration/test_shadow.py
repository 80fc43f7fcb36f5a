"""Shadow mode and canary over HTTP: a real server with a champion and a different challenger.

The challenger is the tiny bundle with its FAKE thresholds moved to 0 (every judged clip
FAKE), so the two disagree wherever the champion does not say FAKE. With a canary share of
0.5, meeting participants are sent to one model by a hash of their id; uploads by a draw.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from servicekit import Server, clip_frames

from serving.shadow import canary_pick
from veracity.analyzer import Analyzer
from veracity.requestlog import read_request_log

pytestmark = pytest.mark.integration

SHARE = 0.5


@pytest.fixture(scope="module")
def challenger(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("challenger") / "bundle"
    shutil.copytree(tiny_bundle, root)
    spec = json.loads((root / "bundle.json").read_text())
    for th in [spec["thresholds"], *spec.get("modality_thresholds", {}).values()]:
        th["real_below"] = th["fake_at"] = 0.0
    (root / "bundle.json").write_text(json.dumps(spec))
    return root


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, challenger: Path, tmp_path_factory: pytest.TempPathFactory):
    s = Server(tmp_path_factory.mktemp("shadow"), {
        "VERACITY_BUNDLE": str(tiny_bundle), "VERACITY_CHALLENGER_BUNDLE": str(challenger),
        "VERACITY_SHADOW": "true", "VERACITY_CANARY_SHARE": str(SHARE)}).start()
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def _rollout(server: Server) -> dict:
    return httpx.get(server.url + "/model", timeout=10).json()["rollout"]


def _wait_compared(server: Server, n: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while (r := _rollout(server))["agreement"]["compared"] < n and time.monotonic() < deadline:
        time.sleep(0.3)
    return r


def test_the_shadow_verdict_is_logged_and_counted_never_returned(server: Server, tiny_corpus: Path,
                                                                  tiny_bundle: Path, challenger: Path) -> None:
    clips = sorted((tiny_corpus / "videos").glob("*.mp4"))[:6]
    want = {"champion": Analyzer(tiny_bundle, device="cpu"), "challenger": Analyzer(challenger, device="cpu")}
    before = _rollout(server)["agreement"]["compared"]
    answers = []
    for c in clips:
        r = httpx.post(server.url + "/analyze", files={"video": (c.name, c.read_bytes(), "video/mp4")}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        served, other = body["served_by"], ({"champion", "challenger"} - {body["served_by"]}).pop()
        # The answer is the serving model's own, whatever the other one says.
        assert body["verdict"] == want[served].analyze(c).verdict
        answers.append((body["request_id"], body["verdict"], want[other].analyze(c).verdict, other))
    rollout = _wait_compared(server, before + len(clips))
    assert rollout["shadow"] is True and rollout["challenger"]["ready"] is True
    agreed = sum(v == w for _, v, w, _ in answers)
    assert rollout["agreement"]["compared"] == before + len(clips) and rollout["agreement"]["failed"] == 0
    assert any(v != w for _, v, w, _ in answers)  # the bundles differ where it matters
    log = read_request_log(Path(server.env["VERACITY_REQUEST_LOG_DIR"]))
    for rid, verdict, shadow_verdict, other in answers:
        rows = log[log["request_id"] == rid]
        served_rows, shadow_rows = rows[rows["role"] == "served"], rows[rows["role"] == "shadow"]
        assert len(served_rows) >= 1 and len(shadow_rows) >= 1
        assert set(shadow_rows["model"]) == {other} and set(served_rows["model"]) != {other}
        assert bool(shadow_rows["agree"].iloc[0]) == (verdict == shadow_verdict)
    metrics = httpx.get(server.url + "/metrics").text
    assert "veracity_shadow_agreement_ratio" in metrics and 'veracity_shadow_total{' in metrics
    assert agreed <= len(clips)


def test_a_participant_stays_with_one_model(server: Server, tiny_corpus: Path) -> None:
    ids = [f"p{i}" for i in range(40)]
    to_challenger = next(i for i in ids if canary_pick(SHARE, i))
    to_champion = next(i for i in ids if not canary_pick(SHARE, i))
    frames = clip_frames(sorted((tiny_corpus / "videos").glob("*.mp4"))[0])
    for pid, model in ((to_challenger, "challenger"), (to_champion, "champion")):
        for _ in range(2):
            r = httpx.post(server.url + "/check_frame_batch", data={"participant_id": pid},
                           files=[("frames", (f"f{i}.jpg", b, "image/jpeg")) for i, b in enumerate(frames)],
                           timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["served_by"] == model


def test_reload_answers_with_both_slots(server: Server) -> None:
    r = httpx.post(server.url + "/admin/reload", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["changed"] == {"champion": False, "challenger": False}  # fixed paths: nothing moved
    assert body["champion"]["ready"] and body["rollout"]["challenger"]["ready"]


def test_jobs_follow_the_canary_rule_and_are_shadowed(server: Server, tiny_corpus: Path) -> None:
    clip = sorted((tiny_corpus / "videos").glob("*.mp4"))[1]
    ids = []
    for _ in range(4):
        r = httpx.post(server.url + "/jobs", files={"video": (clip.name, clip.read_bytes(), "video/mp4")}, timeout=30)
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    deadline = time.monotonic() + 120
    done = {}
    while len(done) < len(ids) and time.monotonic() < deadline:
        for j in ids:
            body = httpx.get(f"{server.url}/jobs/{j}", timeout=10).json()
            if body["state"] in ("done", "failed", "cancelled"):
                done[j] = body
        time.sleep(0.5)
    assert {b["state"] for b in done.values()} == {"done"} and len(done) == len(ids)
    for j, b in done.items():  # the job id decides, as a participant id does
        assert b["served_by"] == b["result"]["served_by"] == ("challenger" if canary_pick(SHARE, j) else "champion")
    # The shadow scores the file after the job is answered: its row may come a moment later.
    deadline = time.monotonic() + 60
    while True:
        log = read_request_log(Path(server.env["VERACITY_REQUEST_LOG_DIR"]))
        shadowed = set(log.loc[(log["endpoint"] == "jobs") & (log["role"] == "shadow"), "request_id"])
        if set(ids) <= shadowed or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for j, b in done.items():
        rows = log[log["request_id"] == j]
        assert set(rows["role"]) == {"served", "shadow"}, rows[["role", "model"]]
        assert set(rows.loc[rows["role"] == "shadow", "model"]) == ({"champion", "challenger"} - {b["served_by"]})
