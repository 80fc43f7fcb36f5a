"""The service over HTTP: a real ``bentoml serve`` on loopback with the session's tiny bundle.

One server is started for the module (``tests/servicekit.py``) with an API key, small
limits and its own state directories, and every route is called over HTTP: health and
readiness, the model description, ``/analyze`` (checked against the in-process
``Analyzer`` on the same file), explanations, ``/check_frame_batch`` with a participant's
successive batches, API keys, the body limit, the logs (no key ever written), the request
log and Prometheus metrics. A second server without a champion shows that the service is
alive but not ready until one is registered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from brokenmedia import CASES, make_broken_corpus, outcome
from servicekit import KEY, Server

from veracity.analyzer import Analyzer
from veracity.corpus.synth.families import ClipSpec, render
from veracity.corpus.synth.identity import sample_identity
from veracity.requestlog import read_request_log

pytestmark = pytest.mark.integration

AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def server(service: Server) -> Server:
    """The session's shared test server (tests/integration/conftest.py)."""
    return service


@pytest.fixture(scope="module")
def clip(tiny_corpus: Path) -> Path:
    return sorted((tiny_corpus / "videos").glob("*.mp4"))[0]


def _face_frames(n: int = 27, seed: int = 3, size: int = 96) -> list[bytes]:
    ident = sample_identity("meeting", np.random.default_rng(seed))
    frames = render(ClipSpec("meeting", "real", ident, None, n / 12.5 + 0.2, 12.5, size, size, 16000, 20, 2.0, seed)).frames
    return [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in list(frames)[:n]]


def _post_frames(server: Server, frames: list[bytes], **data: str) -> httpx.Response:
    files = [("frames", (f"f{i}.jpg", b, "image/jpeg")) for i, b in enumerate(frames)]
    return httpx.post(server.url + "/check_frame_batch", files=files, data=data, headers=AUTH, timeout=60)


# ------------------------------------------------------------------------------ health and model


def test_health_routes_report_the_loaded_bundle(server: Server, tiny_bundle: Path) -> None:
    assert httpx.get(server.url + "/health/live").status_code == 200
    ready = httpx.get(server.url + "/health/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    h = httpx.get(server.url + "/health").json()
    assert h["model_loaded"] and h["ready"] and h["reason"] is None
    assert h["checkpoint_path"] == str(tiny_bundle)
    assert h["bundle_sha256"] == Analyzer(tiny_bundle, device="cpu").identity["sha256"]
    assert h["runtime"]["forward"]["members"] == 2 and h["auth"] == "on"
    assert h["runtime"]["precision"] == "fp32"  # auto on CPU
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.get(server.url + "/livez").status_code == 200


def test_model_route_describes_members_thresholds_contract_and_card(server: Server) -> None:
    r = httpx.get(server.url + "/model", headers=AUTH)
    assert r.status_code == 200
    m = r.json()
    assert {x["name"] for x in m["members"]} == {"video", "audio"}
    assert 0 < m["thresholds"]["real_below"] <= m["thresholds"]["fake_at"] < 1
    assert m["contract"]["frames_per_window"] == 8 and "#" in m["model_card"]
    assert m["disagreement"]["k"] >= 1 and m["disagreement"]["bound"] > 0 and "reference" not in m["disagreement"]
    assert "video" in m["modality_thresholds"]
    assert m["fallbacks"] == []  # two members: one left is the video-alone rule's case, not a fallback's


def test_openapi_lists_every_route(server: Server) -> None:
    paths = httpx.get(server.url + "/docs.json").json()["paths"]
    for route in ("/analyze", "/check_frame_batch", "/health", "/health/live", "/health/ready", "/model"):
        assert route in paths


# ------------------------------------------------------------------------------ security and limits


def test_a_key_is_required_except_on_open_routes(server: Server, clip: Path) -> None:
    files = {"video": ("a.mp4", clip.read_bytes(), "video/mp4")}
    assert httpx.post(server.url + "/analyze", files=files).status_code == 401
    assert httpx.post(server.url + "/analyze", files=files, headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert httpx.get(server.url + "/model").status_code == 401
    ok = httpx.post(server.url + "/analyze", files=files, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert ok.status_code == 200
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_a_body_over_the_limit_gets_413_with_or_without_content_length(server: Server) -> None:
    big = b"\x00" * (1024 * 1024 + 10)
    r = httpx.post(server.url + "/analyze", files={"video": ("big.mp4", big, "video/mp4")}, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit is enforced while the bytes arrive
        for _ in range(40):
            yield b"\x00" * 65536

    r = httpx.post(server.url + "/analyze", content=chunks(), headers={**AUTH, "Content-Type": "application/octet-stream",
                                                                      "X-Request-ID": "req-too-big"}, timeout=30)
    assert r.status_code == 413 and r.headers["x-request-id"] == "req-too-big"
    # an unauthenticated oversized body is refused for the key, before its size
    assert httpx.post(server.url + "/analyze", content=big, headers={"Content-Type": "video/mp4"}).status_code == 401
    assert httpx.get(server.url + "/health/ready").status_code == 200


# ------------------------------------------------------------------------------ analysis


def test_analyze_returns_the_analyzers_report(server: Server, clip: Path, tiny_bundle: Path) -> None:
    r = httpx.post(server.url + "/analyze", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
                   headers={**AUTH, "X-Request-ID": "req-analyze-1"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-analyze-1"
    got = r.json()
    want = Analyzer(tiny_bundle, device="cpu").analyze(clip)
    assert got["verdict"] == want.verdict and got["request_id"] == "req-analyze-1"
    assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
    assert set(got["members"]) == {"video", "audio"} and got["timeline"] and got["top_frames"]
    assert got["path"] == "upload"  # no server path leaks


def test_explain_links_overlay_images_that_can_be_fetched(server: Server, clip: Path) -> None:
    r = httpx.post(server.url + "/analyze", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
                   data={"explain": "true"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    overlays = r.json()["explanations"]["overlays"]
    assert overlays and all(o["png"].startswith("/artifacts/") for o in overlays)
    img = httpx.get(server.url + overlays[0]["png"], headers=AUTH)
    assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
    assert httpx.get(server.url + "/artifacts/nope/x.png", headers=AUTH).status_code == 404
    assert httpx.get(server.url + "/artifacts/..%2F..%2Fetc/passwd", headers=AUTH).status_code == 404


@pytest.mark.parametrize(("name", "content", "status", "error"), [
    ("empty.mp4", b"", 400, "empty"),
    ("notes.mp4", b"this is a text file, not a video\n" * 20, 415, "not_media"),
    ("photo.mp4", cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes(), 415, "still_image"),
])
def test_what_cannot_be_a_video_is_refused_by_content(server: Server, name: str, content: bytes, status: int,
                                                       error: str) -> None:
    r = httpx.post(server.url + "/analyze", files={"video": (name, content, "video/mp4")}, headers=AUTH, timeout=30)
    assert r.status_code == status and r.json()["error"] == error


def test_random_bytes_get_abstain_corrupt_not_an_error(server: Server) -> None:
    data = bytes(8) + np.random.default_rng(0).bytes(5000)  # matches no signature: FFmpeg decides
    r = httpx.post(server.url + "/analyze", files={"video": ("x.mp4", data, "video/mp4")}, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["verdict"] == "ABSTAIN" and r.json()["reason"] == "corrupt"


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory):
    return make_broken_corpus(tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("case", CASES)
def test_every_broken_file_gets_a_specific_4xx_or_abstain_never_5xx(server: Server, broken, case: str) -> None:
    c = broken[case]
    r = httpx.post(server.url + "/analyze", files={"video": (c.path.name, c.path.read_bytes(), "video/mp4")},
                   headers=AUTH, timeout=60)
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code == 200:
        got = outcome(body["verdict"], body["reason"])
        assert got in c.expect and body["reason"] != "error", (case, got, body.get("message"))
    else:
        assert f"http:{r.status_code}" in c.expect and body["error"] and body["message"], (case, body)
    if "long" in c.kind:
        assert r.status_code == 413 and body["error"] == "too_long"
    assert httpx.get(server.url + "/health/ready").status_code == 200


def test_no_temporary_upload_is_left_behind(server: Server, clip: Path) -> None:
    tmp = Path(server.env["TMPDIR"])  # the service's own (BentoML keeps its working folders there too)
    before = set(tmp.rglob("*"))
    r = httpx.post(server.url + "/analyze", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
                   headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["verdict"] != "ABSTAIN"  # it was extracted and judged there
    # No upload and no extraction directory left; BentoML may keep an empty request folder.
    left = {p for p in set(tmp.rglob("*")) - before if p.is_file() or not p.name.startswith("bentoml-request-")}
    assert left == set(), sorted(left)


# ------------------------------------------------------------------------------ frame batches


def test_a_frame_batch_gets_per_frame_probabilities_and_a_verdict(server: Server) -> None:
    r = _post_frames(server, _face_frames(27))
    assert r.status_code == 200, r.text
    d = r.json()
    assert len(d["frames"]) == 27
    scored = [f for f in d["frames"] if f["probability"] is not None]
    assert scored and all(0.0 <= f["probability"] <= 1.0 for f in scored)
    assert d["verdict"] in {"FAKE", "UNCERTAIN", "REAL"}


def test_a_participant_accumulates_evidence_across_batches(server: Server) -> None:
    first = _post_frames(server, _face_frames(27, seed=5), participant_id="alice").json()
    second = _post_frames(server, _face_frames(27, seed=5), participant_id="alice").json()
    assert first["running"]["batches"] == 1 and second["running"]["batches"] == 2
    assert second["running"]["verdict"] in {"FAKE", "UNCERTAIN", "REAL"}
    other = _post_frames(server, _face_frames(27, seed=6), participant_id="bob").json()
    assert other["running"]["batches"] == 1


def test_faceless_and_undecodable_frames_are_flagged_never_real(server: Server) -> None:
    ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (96, 1, 3))
    blank = [cv2.imencode(".jpg", ramp)[1].tobytes()] * 27
    d = _post_frames(server, blank).json()
    assert d["verdict"] == "ABSTAIN" and d["reason"] == "no_face"
    assert all(f["face"] is False and f["probability"] is None for f in d["frames"])
    mixed = _post_frames(server, _face_frames(22) + [b"garbage"] * 5).json()
    assert [f.get("error") or f.get("reason") for f in mixed["frames"][22:]] and all(
        f["probability"] is None for f in mixed["frames"][22:])


@pytest.mark.parametrize(("frames", "data", "status"), [
    ([], {}, 400),
    ([b"\xff\xd8\xff"] * 41, {}, 413),
    (None, {"member": "nobody"}, 400),
    (None, {"participant_id": "../../etc"}, 400),
])
def test_bad_frame_batches_get_a_specific_4xx(server: Server, frames, data: dict, status: int) -> None:
    if frames is None:
        frames = _face_frames(12)
    if frames:
        r = _post_frames(server, frames, **data)
    else:
        r = httpx.post(server.url + "/check_frame_batch", data={"participant_id": "x"}, headers=AUTH, timeout=30)
    assert r.status_code == status, r.text


# ------------------------------------------------------------------------------ logs and metrics


def test_logs_are_json_with_request_ids_and_never_hold_the_key(server: Server, clip: Path) -> None:
    httpx.post(server.url + "/analyze", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
               headers={**AUTH, "X-Request-ID": "req-log-1"}, timeout=60)
    httpx.get(server.url + "/model", headers={"X-API-Key": KEY + "-wrong"})
    time.sleep(0.5)
    text = (server.state / "logs" / "service.log").read_text()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(e.get("request_id") == "req-log-1" and e.get("path") == "/analyze" for e in events)
    assert KEY not in text and KEY not in server.output()


def test_the_request_log_has_a_row_per_analysis_without_paths(server: Server, clip: Path) -> None:
    httpx.post(server.url + "/analyze", files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
               headers={**AUTH, "X-Request-ID": "req-rowlog-1"}, timeout=60)
    rows = read_request_log(server.state / "requests")
    mine = rows[rows["request_id"] == "req-rowlog-1"]
    assert len(mine) >= 1 and mine["endpoint"].eq("analyze").all()
    assert "path" not in rows.columns and {"p_video", "p_audio"} <= set(rows.columns)
    assert mine["bundle_sha256"].notna().all() and (mine["latency_ms"] > 0).all()


def _counter(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prometheus_metrics_count_verdicts_and_abstentions(server: Server) -> None:
    before = httpx.get(server.url + "/metrics").text
    data = bytes(8) + np.random.default_rng(1).bytes(3000)  # matches no signature: FFmpeg decides
    r = httpx.post(server.url + "/analyze", files={"video": ("x.mp4", data, "video/mp4")}, headers=AUTH, timeout=30)
    assert r.json()["reason"] == "corrupt"
    after = httpx.get(server.url + "/metrics").text
    for name, labels in (("veracity_abstain_total", {"endpoint": "analyze", "reason": "corrupt"}),
                         ("veracity_verdicts_total", {"endpoint": "analyze", "verdict": "ABSTAIN"})):
        assert _counter(after, name, **labels) == _counter(before, name, **labels) + 1
    assert "veracity_analysis_seconds_bucket" in after


def test_the_service_is_still_ready_after_everything(server: Server) -> None:
    assert httpx.get(server.url + "/health/ready").status_code == 200


# ------------------------------------------------------------------------------ readiness follows the registry


def test_without_a_champion_the_service_is_alive_not_ready_until_one_is_registered(
        tiny_bundle: Path, tmp_path: Path) -> None:
    from registrykit import make_benchmark

    from veracity.config import GateConfig, RegisterConfig
    from veracity.stages.register import register_bundle

    s = Server(tmp_path / "state", {"VERACITY_POLL_S": "1"}).start()
    try:
        assert httpx.get(s.url + "/health/live").status_code == 200
        ready = httpx.get(s.url + "/health/ready")
        assert ready.status_code == 503 and "veracity-detector" in ready.json()["reason"]
        assert httpx.get(s.url + "/readyz").status_code == 503
        h = httpx.get(s.url + "/health").json()
        assert h["ready"] is False and h["model_loaded"] is False
        r = httpx.post(s.url + "/check_frame_batch", files=[("frames", ("a.jpg", b"\xff\xd8\xff", "image/jpeg"))])
        assert r.status_code == 503 and r.json()["error"] == "not_ready"  # never random weights

        result = register_bundle(tiny_bundle, make_benchmark(tiny_bundle), RegisterConfig(), GateConfig(),
                                 s.state)
        assert result["promoted"]
        h = s.wait_ready(timeout=60)
        assert h["registry_version"] == "1" and h["alias"] == "champion"
        assert h["model_uri"] == "models:/veracity-detector@champion"
    finally:
        s.stop()
