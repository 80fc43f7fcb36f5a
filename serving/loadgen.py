"""A load generator for the service: N concurrent clients over ``/analyze``, ``/jobs`` and
``/check_frame_batch``, bounded in time and count, with every answer checked.

Used by the load test (``tests/integration/test_load.py``) and ``bench/serve_load.py``; an
operator can point it at a deployment the same way. A client loops: pick a route by the
``mix`` weights, send the next clip (or frame batch), record the status and latency. An
error is a transport failure, a 5xx, or a 4xx on input that is valid. Jobs are polled
after the load until they end (bounded): one that never ends, or ends other than
``done``, is counted lost.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

ROUTES = ("analyze", "jobs", "frames")


@dataclass
class LoadResult:
    """What a load run saw, per route: counts, errors and latency percentiles."""

    seconds: float
    clients: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    jobs_submitted: int = 0
    jobs_done: int = 0
    jobs_lost: list[str] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def summary(self) -> dict[str, Any]:
        per = {}
        for route, lat in self.latencies.items():
            a = np.asarray(lat) if lat else np.asarray([np.nan])
            per[route] = {"n": len(lat), "p50_s": round(float(np.nanpercentile(a, 50)), 4),
                          "p95_s": round(float(np.nanpercentile(a, 95)), 4),
                          "per_s": round(len(lat) / self.seconds, 3) if self.seconds else None}
        return {"clients": self.clients, "seconds": round(self.seconds, 2), "completed": self.completed,
                "throughput_per_s": round(self.completed / self.seconds, 3) if self.seconds else None,
                "errors": len(self.errors), "error_samples": self.errors[:5], "routes": per,
                "jobs_submitted": self.jobs_submitted, "jobs_done": self.jobs_done, "jobs_lost": len(self.jobs_lost)}


async def _client(c: httpx.AsyncClient, k: int, deadline: float, budget: itertools.count, max_requests: int,
                  mix: Mapping[str, float], clips: Sequence[bytes], frames: Sequence[bytes], out: LoadResult,
                  job_ids: list[str]) -> None:
    rng = random.Random(k)
    routes, weights = zip(*[(r, w) for r, w in mix.items() if w > 0], strict=True)
    i = k
    while time.monotonic() < deadline and next(budget) < max_requests:
        route = rng.choices(routes, weights)[0]
        clip = clips[i % len(clips)]
        i += 1
        t0 = time.perf_counter()
        try:
            if route == "analyze":
                r = await c.post("/analyze", files={"video": ("clip.mp4", clip, "video/mp4")})
                ok = r.status_code == 200
            elif route == "jobs":
                r = await c.post("/jobs", files={"video": ("clip.mp4", clip, "video/mp4")})
                ok = r.status_code == 202
                if ok:
                    job_ids.append(r.json()["job_id"])
            else:
                r = await c.post("/check_frame_batch", data={"participant_id": f"load-{k}"},
                                 files=[("frames", (f"f{j}.jpg", b, "image/jpeg")) for j, b in enumerate(frames)])
                ok = r.status_code == 200
        except httpx.HTTPError as exc:
            out.errors.append(f"{route}: {type(exc).__name__}: {exc}"[:300])
            continue
        if not ok:
            out.errors.append(f"{route}: HTTP {r.status_code}: {r.text[:200]}")
            continue
        out.latencies.setdefault(route, []).append(time.perf_counter() - t0)


async def _run(url: str, clients: int, seconds: float, max_requests: int, mix: Mapping[str, float],
               clips: Sequence[bytes], frames: Sequence[bytes], headers: Mapping[str, str],
               job_timeout_s: float) -> LoadResult:
    out = LoadResult(seconds=0.0, clients=clients)
    job_ids: list[str] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, headers=dict(headers), timeout=300, limits=limits) as c:
        t0 = time.monotonic()
        budget = itertools.count()
        await asyncio.gather(*[_client(c, k, t0 + seconds, budget, max_requests, mix, clips, frames, out, job_ids)
                               for k in range(clients)])
        out.seconds = time.monotonic() - t0
        out.jobs_submitted = len(job_ids)
        pending, deadline = set(job_ids), time.monotonic() + job_timeout_s
        while pending and time.monotonic() < deadline:
            for j in list(pending):
                r = await c.get(f"/jobs/{j}")
                state = r.json().get("state") if r.status_code == 200 else None
                if state in ("done", "failed", "cancelled"):
                    pending.discard(j)
                    if state == "done":
                        out.jobs_done += 1
                    else:
                        out.jobs_lost.append(f"{j}: {state}: {r.json().get('error')}")
            if pending:
                await asyncio.sleep(0.5)
        out.jobs_lost += [f"{j}: not ended" for j in sorted(pending)]
    return out


def run_load(url: str, *, clips: Sequence[bytes], frames: Sequence[bytes] = (), clients: int = 16,
             seconds: float = 60.0, max_requests: int = 10_000, mix: Mapping[str, float] | None = None,
             headers: Mapping[str, str] | None = None, job_timeout_s: float = 300.0) -> LoadResult:
    """Drive ``url`` with ``clients`` concurrent clients for ``seconds`` (or ``max_requests``)."""
    mix = dict(mix or {"analyze": 1.0, "jobs": 0.5, "frames": 1.0 if frames else 0.0})
    unknown = set(mix) - set(ROUTES)
    if unknown or not any(w > 0 for w in mix.values()):
        raise ValueError(f"mix must weigh some of {ROUTES}, got {dict(mix)}")
    if mix.get("frames", 0) > 0 and not frames:
        raise ValueError("the mix sends frame batches but no frames were given")
    return asyncio.run(_run(url, clients, seconds, max_requests, mix, clips, frames, headers or {}, job_timeout_s))
