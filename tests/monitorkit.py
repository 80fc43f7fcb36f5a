"""Tiny synthetic traffic for the monitoring tests: a reference and request-log rows drawn alike.

:func:`reference` stands for a bundle's reference (the same columns, 200 rows);
:func:`rows` draws request-log rows from the same distributions, optionally shifted
(``shift={"brightness": -60}`` moves a fact, ``ood_share`` makes rows ABSTAIN out of
profile), so a test knows what drift there is. Seeds fix everything.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import ABSTAINED, OUT_OF_PROFILE, VERDICT, Reference
from veracity.profile import FACTS
from veracity.requestlog import COLUMNS, RequestLog

SHA = "ab" * 32
MEMBERS = ("video", "audio")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
_REAL_BELOW, _FAKE_AT = 0.2, 0.8


def _draw(n: int, rng: np.random.Generator, shift: dict[str, float]) -> pd.DataFrame:
    fake = rng.random(n) < 0.6
    df = pd.DataFrame({
        "duration_s": rng.uniform(3.0, 4.0, n), "fps": np.full(n, 25.0), "width": np.full(n, 128.0),
        "height": np.full(n, 128.0), "face_px": rng.normal(76, 5, n).round(), "brightness": rng.normal(133, 26, n),
        "sharpness": rng.lognormal(5.7, 0.7, n), "rms_dbfs": rng.normal(-21.7, 2.2, n),
        "speech_ratio": rng.normal(0.7, 0.09, n).clip(0, 1), "face_ratio": np.ones(n),
        "ood_score": rng.normal(0.58, 0.14, n).clip(0.05, None),
        "p_video": np.where(fake, rng.beta(8, 2, n), rng.beta(2, 8, n)),
        "p_audio": np.where(fake, rng.beta(6, 3, n), rng.beta(2, 9, n)),
    })
    df["probability"] = (df["p_video"] + df["p_audio"]) / 2
    for column, delta in shift.items():
        prob = column == "probability" or column.startswith("p_")
        df[column] = (df[column] + delta).clip(0.001, 0.999 if prob else None)
    df[VERDICT] = np.where(df["probability"] >= _FAKE_AT, "FAKE",
                           np.where(df["probability"] < _REAL_BELOW, "REAL", "UNCERTAIN"))
    return df


def reference(seed: int = 0, n: int = 200) -> Reference:
    """A reference of ``n`` rows (the members' columns on the first half only, as a bundle's are fewer)."""
    df = _draw(n, np.random.default_rng(seed), {})
    for c in ("p_video", "p_audio", "probability", VERDICT):
        df.loc[n // 2:, c] = np.nan
    df[ABSTAINED] = "no"
    df[OUT_OF_PROFILE] = "no"
    cols = [*FACTS, "ood_score", "p_video", "p_audio", "probability", VERDICT, ABSTAINED, OUT_OF_PROFILE]
    return Reference(frame=df[cols], members=MEMBERS, modalities=("audio", "video"), bundle_sha256=SHA, clip=5.0,
                     source="monitorkit")


def rows(n: int, seed: int, shift: dict[str, float] | None = None, ood_share: float = 0.0,
         start: datetime = T0) -> list[dict[str, Any]]:
    """``n`` served request-log rows, one a minute from ``start``."""
    rng = np.random.default_rng(seed)
    df = _draw(n, rng, shift or {})
    out = []
    for i, r in enumerate(df.to_dict("records")):
        row: dict[str, Any] = {name: None for name, _ in COLUMNS}
        row.update({k: r[k] for k in FACTS}, time=start + timedelta(minutes=i), request_id=f"r{seed}-{i}",
                   endpoint="analyze", bundle_sha256=SHA, person=0, verdict=r[VERDICT], probability=r["probability"],
                   ood_score=r["ood_score"], latency_ms=900.0, has_audio=1, audio_s=r["duration_s"], rotation=0,
                   n_tracks=1, n_frames=16, members={"video": r["p_video"], "audio": r["p_audio"]},
                   modalities={"video": r["p_video"], "audio": r["p_audio"]}, judged="audio,video", role="served",
                   model="champion")
        if rng.random() < ood_share:
            row.update(verdict="ABSTAIN", reason="out_of_distribution", probability=None, judged=None,
                       ood_score=1.5 + rng.random())
        for k in ("width", "height"):
            row[k] = int(row[k])
        out.append(row)
    return out


def write_log(directory: Path, batch: list[dict[str, Any]]) -> Path:
    """``batch`` appended to a request log in ``directory``."""
    RequestLog(directory).append(batch)
    return directory


def summary(out: Path) -> dict[str, Any]:
    """The ``summary.json`` a monitor run wrote to ``out``."""
    return json.loads((out / "summary.json").read_text())
