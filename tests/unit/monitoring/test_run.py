"""``veracity monitor``: the exit code follows the verdict, the reports name what drifted, bad input exits 2."""

from __future__ import annotations

import json
import re
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


def test_the_reports_are_the_same_bytes_twice_with_every_widget_still_named_once(tmp_path: Path) -> None:
    from monitoring.run import stable_ids

    (tmp_path / "none.yaml").write_text("{}\n")
    log = kit.write_log(tmp_path / "log", kit.rows(n=70, seed=5))
    for out in ("a", "b"):
        assert _monitor(log, tmp_path / out).exit_code in (0, 1)
    for name in ("report.html", "report.json", "summary.json", "validation/request_log.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # One-to-one: as many distinct ids as Evidently wrote, and each reference follows its id.
    text = "var metric_0123456789abcdef0123456789abcdef = {'id': '11111111-2222-7333-8444-555555555555'}; " \
           "render(metric_0123456789abcdef0123456789abcdef, '11111111-2222-7333-8444-555555555555', " \
           "'99999999-2222-4333-8444-555555555555')"
    out = stable_ids(text)
    ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", out)
    names = re.findall(r"metric_([0-9a-f]{32})", out)
    assert len(ids) == 3 and ids[0] == ids[1] != ids[2] and len(set(names)) == 1 and len(names[0]) == 32
    assert "11111111" not in out and "0123456789abcdef" not in out
    assert stable_ids(text) == out
