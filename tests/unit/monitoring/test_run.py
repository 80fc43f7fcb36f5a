"""``veracity monitor``: the exit code follows the verdict, the reports name what drifted, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import monitorkit as kit
import pytest
from typer.testing import CliRunner

from monitoring.drift import Reference
from veracity.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def kit_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # The bundle's reference is monitorkit's (test_drift checks the decision; a bundle's own
    # reference is read in the stage check against a pipeline's bundle).
    monkeypatch.setattr(Reference, "from_bundle", classmethod(lambda cls, path: kit.reference()))


def _monitor(log: Path, out: Path, *extra: str):
    return runner.invoke(app, ["monitor", "--log", str(log), "--bundle", "unused", "--out", str(out),
                               "--params", str(out.parent / "none.yaml"), *extra])


def test_exit_code_follows_drift_and_the_reports_name_the_drifted_columns(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    same = _monitor(kit.write_log(tmp_path / "same", kit.rows(n=70, seed=11)), tmp_path / "r_same")
    assert same.exit_code == 0, same.output
    assert kit.summary(tmp_path / "r_same")["status"] == "no_drift"
    dark = _monitor(kit.write_log(tmp_path / "dark", kit.rows(n=70, seed=11, shift={"brightness": -60})),
                    tmp_path / "r_dark")
    assert dark.exit_code == 1, dark.output
    assert "DRIFT brightness" in dark.output
    out = tmp_path / "r_dark"
    assert kit.summary(out)["drifted"] == ["brightness"]
    html, evidently = (out / "report.html").read_text(), json.loads((out / "report.json").read_text())
    assert "brightness" in html and "<html" in html.lower()
    failed = [t["name"] for t in evidently["tests"] if t["status"] == "FAIL"]
    assert failed == ["Value Drift for column brightness"]
    assert (out / "validation" / "request_log.json").is_file()


def test_a_missing_empty_or_unreadable_log_exits_2_with_a_message_and_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "none.yaml").write_text("{}\n")
    missing = _monitor(tmp_path / "nowhere", tmp_path / "r1")
    assert missing.exit_code == 2 and "no request log" in missing.output
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "requests.sqlite").write_bytes(b"\x00garbage" * 64)
    bad = _monitor(tmp_path / "garbage", tmp_path / "r2")
    assert bad.exit_code == 2 and "skipped" in bad.output and "not judged" in bad.output
    assert "Traceback" not in bad.output + missing.output
    assert kit.summary(tmp_path / "r2")["log"]["files_skipped"]
    assert "Not judged" in (tmp_path / "r2" / "report.html").read_text()
    bound = _monitor(kit.write_log(tmp_path / "few", kit.rows(n=5, seed=1)), tmp_path / "r3", "--since", "soon")
    assert bound.exit_code == 2 and "error:" in bound.output
