"""The analysts' page in a real headless Chromium against the session's real server.

Debian's ``chromium`` (installed by ``make test``'s set-up) driven by Playwright: upload an
authentic and a manipulated clip and wait for the verdicts, check the timeline, the frame
gallery and the members, an ``ABSTAIN`` with its reason, a panel per person, an oversize
file refused before upload, the page without a key, and phone width. Screenshots go to ``var/test-artifacts/page/``.
"""

from __future__ import annotations

import csv
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from servicekit import KEY, LIMITS, Server

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "page"
# The flags a sandboxed, offline machine needs (no background calls to Google's hosts).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
VERDICT_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.fail("no chromium: `make test` installs Debian's chromium for the browser tests (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, service: Server):
    """A fresh tab (its own storage, so no key yet), refusing any request that leaves the service."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    outside: list[str] = []

    def only_the_service(route) -> None:
        if route.request.url.startswith(service.url) or route.request.url.startswith("blob:"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_service)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not outside, f"the page asked for something outside the service: {outside}"
    assert not errors, f"the page's script failed: {errors}"


def _until(pg, condition: str, timeout_s: float = 30.0) -> None:
    """Wait for a condition in the page (``wait_for_function`` evaluates strings, which the
    page's content security policy rightly forbids; ``evaluate`` goes through the debugger)."""
    deadline = time.monotonic() + timeout_s
    while not pg.evaluate(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {condition}")
        time.sleep(0.1)


def _shot(pg, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _with_key(pg, service: Server) -> None:
    pg.goto(service.url + "/")
    pg.wait_for_selector("#key-panel:not([hidden])")
    pg.fill("#key", KEY)
    pg.click("#key-form button")
    expect(pg.locator("#model")).to_contain_text("bundle")


def _clip(tiny_corpus: Path, real: bool) -> Path:
    with open(tiny_corpus / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if (r["method"] == "real") == real)
    return tiny_corpus / row["path"]


def _upload(pg, path: Path) -> None:
    pg.set_input_files("#file", str(path))
    pg.click("#submit")
    pg.wait_for_selector("#result:not([hidden])", timeout=VERDICT_TIMEOUT_MS)


def _api_result(service: Server, name: str) -> dict:
    """The result of the newest job for ``name``, read from the API."""
    jobs = httpx.get(service.url + "/jobs?limit=50", headers={"X-API-Key": KEY}).json()["jobs"]
    job = next(j for j in jobs if j.get("filename") == name and j["state"] == "done")
    return httpx.get(service.url + f"/jobs/{job['job_id']}", headers={"X-API-Key": KEY}).json()["result"]


@pytest.mark.parametrize("real", [False, True], ids=["manipulated", "authentic"])
def test_an_uploaded_clip_gets_its_verdict_timeline_frames_and_members(page, service: Server, tiny_corpus: Path,
                                                                       real: bool) -> None:
    pg = page
    _with_key(pg, service)
    clip = _clip(tiny_corpus, real)
    _upload(pg, clip)
    want = _api_result(service, clip.name)
    assert pg.inner_text("#verdict") == want["verdict"]
    assert pg.inner_text("#job-state") == "done"
    if want["verdict"] == "ABSTAIN":
        pytest.fail(f"the tiny bundle abstained on {clip.name}: {want['message']}")
    assert f"{want['probability']:.3f}" in pg.inner_text("#probability")
    assert f"{want['thresholds']['fake_at']:.3f}" in pg.inner_text("#thresholds")
    # The timeline: one fused line, a line per judged modality, a row per segment.
    best = next(p for p in want["persons"] if p["track"] == want["person"])
    assert pg.locator("#timeline polyline.fused").count() == 1
    assert pg.locator("#timeline polyline.line").count() == 1 + len(best["window_scores"][0]["modalities"])
    assert pg.locator("#timeline tr").count() == 1 + len(best["timeline"])
    fake_segments = sum(s["verdict"] == "FAKE" for s in best["timeline"])
    assert pg.locator("#timeline rect.segment.FAKE").count() == fake_segments
    # The gallery: one button per suspicious frame, each with its heat map; a click seeks the player.
    frames = pg.locator("#gallery button")
    assert frames.count() == len(best["top_frames"]) > 0
    _until(pg, "[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
    assert pg.locator("#gallery img").count() == len(want["explanations"]["overlays"])
    frames.nth(0).click()
    t = pg.evaluate("document.getElementById('player').currentTime")
    assert t == pytest.approx(best["top_frames"][0]["time_s"], abs=0.05)
    assert pg.locator("#members tr").count() == 1 + len(want["members"])
    # This key's recent jobs list it, and the card opens.
    expect(pg.locator("#recent")).to_contain_text(clip.name)
    pg.click("#card-open")
    assert "#" in pg.inner_text("#card-text") or len(pg.inner_text("#card-text")) > 50
    pg.keyboard.press("Escape")
    _shot(pg, f"verdict-{'authentic' if real else 'manipulated'}")


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from brokenmedia import make_broken_corpus

    return make_broken_corpus(tmp_path_factory.mktemp("page_media"))


def test_a_faceless_clip_abstains_with_its_reason_in_words(page, service: Server, awkward: dict) -> None:
    pg = page
    _with_key(pg, service)
    _upload(pg, awkward["no_face"].path)
    assert pg.inner_text("#verdict") == "ABSTAIN"
    assert "no probability" in pg.inner_text("#probability")
    reason = pg.inner_text("#reason-list")
    assert "no_face" in reason and "face" in pg.inner_text("#message")
    assert pg.locator("#timeline").count() == 0  # nothing was judged, so nothing is charted
    _shot(pg, "abstain-no-face")


def test_two_people_get_a_panel_each(page, service: Server, awkward: dict) -> None:
    pg = page
    _with_key(pg, service)
    _upload(pg, awkward["two_people"].path)
    want = _api_result(service, awkward["two_people"].path.name)
    tabs = pg.locator("#persons-nav button")
    assert len(want["persons"]) == 2 and tabs.count() == 2
    chosen = next(i for i, p in enumerate(want["persons"]) if p["track"] == want["person"])
    assert tabs.nth(chosen).get_attribute("aria-selected") == "true"
    other = 1 - chosen
    tabs.nth(other).click()
    expect(pg.locator("#person h2")).to_contain_text(f"face track {want['persons'][other]['track']}")
    assert pg.locator("#timeline tr").count() == 1 + len(want["persons"][other]["timeline"])
    _shot(pg, "two-people")


def test_an_oversize_file_is_refused_before_upload(page, service: Server, tmp_path: Path) -> None:
    pg = page
    _with_key(pg, service)
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * int((float(LIMITS["VERACITY_MAX_UPLOAD_MB"]) + 0.5) * 2**20))
    assert f"{LIMITS['VERACITY_MAX_UPLOAD_MB']} MB" in pg.inner_text("#limit")
    before = len(httpx.get(service.url + "/jobs?limit=500", headers={"X-API-Key": KEY}).json()["jobs"])
    pg.set_input_files("#file", str(big))
    pg.click("#submit")
    msg = pg.inner_text("#submit-msg")
    assert "big.mp4" in msg and "limit" in msg and "not uploaded" in msg
    assert pg.locator("#job").is_hidden()
    assert len(httpx.get(service.url + "/jobs?limit=500", headers={"X-API-Key": KEY}).json()["jobs"]) == before
    _shot(pg, "oversize-refused")


def test_without_a_key_the_page_asks_for_one_and_refuses_a_wrong_one(page, service: Server) -> None:
    pg = page
    pg.goto(service.url + "/")
    pg.wait_for_selector("#key-panel:not([hidden])")
    assert "needs an API key" in pg.inner_text("#key-msg")
    assert pg.locator("#card-open").is_disabled()
    pg.fill("#key", "vk-not-the-right-key-at-all")
    pg.click("#key-form button")
    expect(pg.locator("#key-msg")).to_contain_text("refused")
    _shot(pg, "no-key")
    # The page itself is open; what it calls is not.
    assert httpx.get(service.url + "/").status_code == 200
    assert httpx.get(service.url + "/jobs").status_code == 401
    assert httpx.get(service.url + "/ui/app.js").status_code == 200
    assert httpx.get(service.url + "/ui/index.py").status_code == 404  # scripts and styles only
    assert httpx.get(service.url + "/ui/%2e%2e%2fservice.py").status_code == 404


def test_the_page_is_usable_at_phone_width(page, service: Server) -> None:
    pg = page
    pg.set_viewport_size({"width": 390, "height": 844})
    _with_key(pg, service)
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways at phone width ({width} px)"
    # Every control has a label a screen reader can read.
    unlabelled = pg.evaluate("""[...document.querySelectorAll('input, button')].filter(e => !e.hidden &&
        !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.id)""")
    assert unlabelled == []
    _shot(pg, "phone")


def test_the_latest_drift_report_is_summarised_and_downloads(page, service: Server, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import monitorkit as kit

    from monitoring.drift import Reference
    from monitoring.run import monitor
    from veracity.config import MonitorConfig

    out = Path(service.env["VERACITY_PROJECT_ROOT"]) / "var" / "serving" / "monitoring"
    monkeypatch.setattr(Reference, "from_bundle", classmethod(lambda cls, path: kit.reference()))
    monitor(MonitorConfig(), "unused", kit.write_log(tmp_path / "log", kit.rows(n=70, seed=11,
                                                                                 shift={"brightness": -60})), out)
    try:
        pg = page
        _with_key(pg, service)
        expect(pg.locator("#drift-summary")).to_contain_text("Drift found in brightness")
        with pg.expect_download() as download:
            pg.click("#monitoring-open")
        saved = tmp_path / "report.html"
        download.value.save_as(saved)
        assert "brightness" in saved.read_text()
        _shot(pg, "drift-summary")
    finally:  # the shared server has no report again (the monitoring service test starts from none)
        shutil.rmtree(out)
        httpx.get(service.url + "/monitoring/summary", headers={"X-API-Key": KEY})
