"""The service serves the latest drift report, its summary, and the drift flag on /metrics (real bentoml serve)."""

from __future__ import annotations

from pathlib import Path

import httpx
import monitorkit as kit
import pytest
from servicekit import KEY, Server

from monitoring.drift import Reference
from monitoring.run import monitor
from veracity.config import MonitorConfig

pytestmark = pytest.mark.integration

AUTH = {"X-API-Key": KEY}


def _gauge(server: Server) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith(("veracity_drift_detected ", "veracity_drift_detected{")):
            return float(line.split()[-1])
    raise AssertionError("no veracity_drift_detected on /metrics")


def test_the_latest_report_its_summary_and_the_drift_flag_are_served(service: Server, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The service's VERACITY_MONITOR_DIR default, under the test server's project root.
    out = Path(service.env["VERACITY_PROJECT_ROOT"]) / "var" / "serving" / "monitoring"
    assert httpx.get(service.url + "/monitoring", headers=AUTH).status_code == 404
    assert _gauge(service) == -1.0
    monkeypatch.setattr(Reference, "from_bundle", classmethod(lambda cls, path: kit.reference()))
    log = kit.write_log(tmp_path / "log", kit.rows(n=70, seed=11, shift={"brightness": -60}))
    monitor(MonitorConfig(), "unused", log, out)
    page = httpx.get(service.url + "/monitoring", headers=AUTH)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "brightness" in page.text
    summary = httpx.get(service.url + "/monitoring/summary", headers=AUTH).json()
    assert summary["drift_detected"] is True and summary["drifted"] == ["brightness"]
    assert _gauge(service) == 1.0
    assert httpx.get(service.url + "/monitoring").status_code == 401  # traffic statistics need the key
