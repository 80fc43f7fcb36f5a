"""The monitor's entry points: one typed function each, for the CLI, DVC and a KFP component.

:func:`monitor` judges a window of a request log against a bundle and writes the report
files (:data:`REPORT_HTML`, :data:`REPORT_JSON`, :data:`SUMMARY_JSON`, and the GX
validation under ``validation/``) into one folder, each replaced atomically so a reader
(the service's ``/monitoring``) never sees half a file. :func:`monitor_stream` is the
``monitor`` stage: a simulated stream (:mod:`monitoring.simulate`) logged, then monitored.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
SUMMARY_JSON = "summary.json"
VALIDATION_DIR = "validation"


_ID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|(?<=metric_)[0-9a-f]{32}\b")


def stable_ids(text: str) -> str:
    """``text`` with each distinct UUID replaced by one derived from its order of appearance.

    Evidently names its widgets and script variables with random and time-based UUIDs, so
    the same report renders to different bytes every run. The replacement keeps the form
    (dashed or 32 hex digits), and a one-to-one map keeps every reference pointing at its
    widget.
    """
    seen: dict[str, str] = {}

    def one(m: re.Match[str]) -> str:
        old = m.group(0)
        if old not in seen:
            new = uuid.uuid5(uuid.NAMESPACE_URL, f"veracity-report/{len(seen)}")
            seen[old] = str(new) if "-" in old else new.hex
        return seen[old]

    return _ID.sub(one, text)


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _publish(tmp, path)


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from a service run as another user
    os.replace(tmp, path)


def monitor(cfg: Any, bundle: Path | str, log: Path | str, out: Path | str, *, since: Any = None,
            until: Any = None, last: int | None = None) -> dict[str, Any]:
    """Judge a window of the request log at ``log`` against the bundle at ``bundle``.

    Args:
        cfg: a :class:`veracity.config.MonitorConfig`.
        bundle: the bundle directory whose reference the window is compared with.
        log: the request-log folder (or one ``.sqlite`` file of it).
        out: where the report files go (created).
        since, until, last: the window (see :func:`monitoring.window.read_window`).

    Returns:
        The summary written to ``summary.json`` (``status`` is ``drift``, ``no_drift`` or
        ``not_judged``).

    Raises:
        veracity.bundle.BundleError: the bundle cannot be used.
        monitoring.window.WindowError: there is no log at ``log``.
    """
    from monitoring.drift import Reference, check
    from monitoring.window import read_window

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ref = Reference.from_bundle(bundle)
    win = read_window(log, since=since, until=until, last=last)
    res = check(win.rows, ref, cfg)
    times = win.rows["time"] if len(win.rows) else None
    summary = {
        **res.summary(),
        "window": {"since": None if since is None else str(since), "until": None if until is None else str(until),
                   "last": last, "first_time": None if times is None else times.min().isoformat(),
                   "last_time": None if times is None else times.max().isoformat()},
        "log": {"path": str(log), **win.accounting()},
        "validation": None if win.validation is None else {
            **win.validation.metrics(), "failed": [r.describe() for r in win.validation.failed]},
        "reference": {"bundle": ref.source, "bundle_sha256": ref.bundle_sha256,
                      "rows": {c: int(ref.frame[c].notna().sum()) for c in ref.frame.columns}},
    }
    if win.validation is not None:
        win.validation.save(out / VALIDATION_DIR)
    if res.snapshot is not None:
        for name, save in ((REPORT_HTML, res.snapshot.save_html), (REPORT_JSON, res.snapshot.save_json)):
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
            os.close(fd)
            save(tmp)  # Evidently 0.7 wants a str path
            text = Path(tmp).read_text(encoding="utf-8")
            Path(tmp).write_text(stable_ids(text), encoding="utf-8")
            _publish(tmp, out / name)
    else:
        _write(out / REPORT_HTML, f"<!doctype html><meta charset='utf-8'><title>Drift report</title>"
                                  f"<p>Not judged: {summary['why_not_judged']}</p>\n")
        _write(out / REPORT_JSON, json.dumps({"metrics": [], "tests": [], "not_judged": summary["why_not_judged"]}))
    _write(out / SUMMARY_JSON, json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    return summary


def monitor_stream(cfg: Any, generate: Any, bundle: Path | str, out: Path | str, work: Path | str,
                   avoid: tuple[int, ...] = ()) -> dict[str, Any]:
    """The ``monitor`` stage: simulate the stream of ``cfg.sim_*`` and monitor all of it.

    The stream's clips are generated under ``work`` (reused while up to date) and its
    request log is ``work/requests``; the reports go to ``out`` (see :func:`monitor`). The
    log stays out of ``out``: it is the SQLite store a service writes (lock files, a WAL
    beside it), the reports' input rather than a report. The reports are the same bytes
    on every run (:func:`stable_ids`, no clock readings in the stream), so running the
    stage again changes nothing DVC tracks.
    """
    from monitoring.simulate import analyse_stream, shifted_corpus

    corpus = shifted_corpus(cfg.sim_shift, generate, cfg.sim_seed, cfg.sim_people, work, avoid)
    log = Path(work) / "requests"
    analyse_stream(bundle, corpus, log, order_seed=cfg.sim_seed, workers=cfg.sim_workers)
    return monitor(cfg, bundle, log, out)
