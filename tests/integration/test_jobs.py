"""Analysis jobs over HTTP: the session's real server, its embedded broker and its job worker.

Submit (upload, ``video_url`` from a loopback HTTP server), poll, cancel (queued and
running), the platform backend's alias routes, refused addresses and inputs, and the
result checked against the in-process ``Analyzer`` on the same file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servicekit import KEY, Server, origin

from veracity.analyzer import Analyzer

pytestmark = pytest.mark.integration

AUTH = {"X-API-Key": KEY}
ENDED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def clips(tiny_corpus: Path) -> list[Path]:
    return sorted((tiny_corpus / "videos").glob("*.mp4"))[:3]


@pytest.fixture(scope="module")
def files(clips: list[Path]) -> Iterator[str]:
    """``/clip``, ``/slow`` (trickled over ~3 s) and a 404 for anything else."""
    with origin(clips[0].read_bytes()) as url:
        yield url


def _submit(server: Server, path: Path | None = None, route: str = "/jobs", **data: str) -> httpx.Response:
    files = {"video": (path.name, path.read_bytes(), "video/mp4")} if path is not None else None
    return httpx.post(server.url + route, files=files, data=data or None, headers=AUTH, timeout=60)


def _wait(server: Server, job_id: str, until: tuple[str, ...] = ENDED, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{server.url}/jobs/{job_id}", headers=AUTH, timeout=10).json()
        if body["state"] in until or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def test_an_uploaded_job_is_accepted_then_done_with_the_analyzers_report(service: Server, clips: list[Path],
                                                                         tiny_bundle: Path) -> None:
    r = _submit(service, clips[1])
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and body["status_url"] == f"/jobs/{body['job_id']}"
    assert r.headers["location"] == body["status_url"]
    done = _wait(service, body["job_id"])
    assert done["state"] == "done", done
    assert done["started_at"] and done["finished_at"] and done["attempts"] == 1
    assert done["bundle_sha256"] == httpx.get(service.url + "/health").json()["bundle_sha256"]
    want = Analyzer(tiny_bundle, device="cpu").analyze(clips[1])
    assert done["result"]["verdict"] == want.verdict
    assert done["result"]["probability"] == pytest.approx(want.probability, abs=1e-6)
    assert done["result"]["path"] == clips[1].name  # the client's file name, never a server path
    # The upload is gone once the job has ended.
    assert not list((Path(service.env["VERACITY_JOB_DIR"]) / "uploads").glob(f"{body['job_id']}*"))


def test_a_url_job_is_fetched_by_the_worker(service: Server, files: str, clips: list[Path],
                                            tiny_bundle: Path) -> None:
    r = httpx.post(service.url + "/jobs", json={"video_url": files + "/clip"}, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    done = _wait(service, r.json()["job_id"])
    assert done["state"] == "done" and done["video_url"] == files + "/clip"
    want = Analyzer(tiny_bundle, device="cpu").analyze(clips[0])
    assert done["result"]["probability"] == pytest.approx(want.probability, abs=1e-6)


def test_a_url_that_fails_at_the_origin_fails_the_job_with_its_reason(service: Server, files: str) -> None:
    r = httpx.post(service.url + "/jobs", json={"video_url": files + "/missing"}, headers=AUTH, timeout=30)
    assert r.status_code == 202
    failed = _wait(service, r.json()["job_id"])
    assert failed["state"] == "failed" and failed["error"] == "upstream_status" and "404" in failed["message"]


@pytest.mark.parametrize(("url", "error"), [
    ("http://169.254.169.254/latest/meta-data/", "address_refused"),
    ("http://10.1.2.3/video.mp4", "address_refused"),
    ("file:///etc/passwd", "scheme"),
    ("ftp://127.0.0.1/x.mp4", "scheme"),
])
def test_refused_urls_get_400_at_submission(service: Server, url: str, error: str) -> None:
    for route in ("/jobs", "/analyze-video"):
        r = httpx.post(service.url + route, json={"video_url": url}, headers=AUTH, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == error, r.text


@pytest.mark.parametrize(("kwargs", "status", "error"), [
    ({"data": {}}, 400, "bad_request"),  # neither a video nor a URL
    ({"content": b"video=1", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ({"files": {"video": ("notes.mp4", b"plain text, not a video\n" * 20, "video/mp4")}}, 415, "not_media"),
    ({"files": {"video": ("empty.mp4", b"", "video/mp4")}}, 400, "empty"),
    ({"json": ["not", "an", "object"]}, 400, "bad_request"),
    ({"files": {"video_url": ("link.txt", b"http://127.0.0.1/x.mp4", "text/plain")}}, 400, "bad_request"),
])
def test_bad_submissions_get_a_specific_4xx(service: Server, kwargs: dict, status: int, error: str) -> None:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    if "data" in kwargs and not kwargs["data"]:
        kwargs = {"files": {"explain": (None, "false")}}
    r = httpx.post(service.url + "/jobs", headers=headers, timeout=30, **kwargs)
    assert r.status_code == status and r.json()["error"] == error, r.text


def test_both_an_upload_and_a_url_is_refused(service: Server, clips: list[Path], files: str) -> None:
    r = _submit(service, clips[0], video_url=files + "/clip")
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


def test_jobs_need_the_api_key_and_unknown_ids_are_404(service: Server, clips: list[Path]) -> None:
    assert httpx.post(service.url + "/jobs", json={"video_url": "http://x"}, timeout=10).status_code == 401
    assert httpx.get(service.url + "/jobs/0123456789abcdef", headers=AUTH).status_code == 404
    assert httpx.get(service.url + "/jobs/..%2F..%2Fetc", headers=AUTH).status_code == 404
    assert httpx.delete(service.url + "/jobs/0123456789abcdef", headers=AUTH).status_code == 404


def test_cancel_a_running_and_a_queued_job(service: Server, files: str, clips: list[Path]) -> None:
    # The worker runs one job at a time: the slow download keeps it busy, so the second waits.
    slow = httpx.post(service.url + "/jobs", json={"video_url": files + "/slow"}, headers=AUTH, timeout=30).json()
    running = _wait(service, slow["job_id"], until=("running", *ENDED))
    assert running["state"] == "running" and running["progress"]["phase"] == "downloading"
    queued = _submit(service, clips[2]).json()
    r = httpx.delete(f"{service.url}/jobs/{queued['job_id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = httpx.delete(f"{service.url}/jobs/{slow['job_id']}", headers=AUTH)
    assert r.status_code == 202 and r.json()["cancel"] == "cancelling"
    assert _wait(service, slow["job_id"])["state"] == "cancelled"
    assert _wait(service, queued["job_id"])["state"] == "cancelled"  # and it never ran
    assert _wait(service, queued["job_id"])["attempts"] == 0


def test_a_finished_job_cannot_be_cancelled(service: Server, clips: list[Path]) -> None:
    job = _submit(service, clips[0]).json()
    assert _wait(service, job["job_id"])["state"] == "done"
    r = httpx.delete(f"{service.url}/jobs/{job['job_id']}", headers=AUTH)
    assert r.status_code == 409 and r.json()["state"] == "done"


def test_the_backends_alias_routes(service: Server, clips: list[Path], files: str, tiny_bundle: Path) -> None:
    r = _submit(service, clips[0], route="/analyze-video")
    assert r.status_code == 202 and set(r.json()) == {"job_id", "status_url", "message"}
    assert _wait(service, r.json()["job_id"])["state"] == "done"
    r = httpx.post(service.url + "/predict", json={"video_url": files + "/clip"}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    want = Analyzer(tiny_bundle, device="cpu").analyze(clips[0])
    assert r.json()["probability"] == pytest.approx(want.probability, abs=1e-6)
    r = httpx.post(service.url + "/predict", json={"video_url": "http://169.254.169.254/x"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"] == "address_refused"


def test_the_job_list_shows_recent_jobs_without_results(service: Server, clips: list[Path]) -> None:
    job = _submit(service, clips[0]).json()
    listed = httpx.get(service.url + "/jobs", params={"limit": 5}, headers=AUTH).json()["jobs"]
    assert listed[0]["job_id"] == job["job_id"] and len(listed) <= 5
    assert all("result" not in j for j in listed)
    _wait(service, job["job_id"])


def test_an_upload_over_the_body_limit_gets_413_and_leaves_nothing(service: Server) -> None:
    uploads = Path(service.env["VERACITY_JOB_DIR"]) / "uploads"
    before = set(uploads.iterdir())
    big = b"\x00\x00\x00\x18ftypmp42" + bytes(2 * 2**20)  # over the shared server's 1 MiB
    r = httpx.post(service.url + "/jobs", files={"video": ("big.mp4", big, "video/mp4")}, headers=AUTH, timeout=30)
    assert r.status_code == 413, r.text
    # Nothing new is left (a job of an earlier test may finish, and its upload go, meanwhile).
    assert set(uploads.iterdir()) <= before
    assert httpx.get(service.url + "/health/ready").status_code == 200


def test_a_job_with_explain_links_overlays_the_api_serves(service: Server, clips: list[Path]) -> None:
    r = _submit(service, clips[1], explain="true")
    assert r.status_code == 202
    done = _wait(service, r.json()["job_id"])
    assert done["state"] == "done", done
    overlays = done["result"]["explanations"]["overlays"]
    assert overlays and all(o["png"].startswith(f"/artifacts/{done['job_id']}/") for o in overlays)
    img = httpx.get(service.url + overlays[0]["png"], headers=AUTH)
    assert img.status_code == 200 and img.content.startswith(b"\x89PNG")
