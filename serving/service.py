"""The BentoML service: routes, limits and logging around :class:`veracity.analyzer.Analyzer`.

Start it with ``make serve`` / ``veracity serve`` (``bentoml serve serving.service:Veracity``).
Settings come from ``VERACITY_*`` variables (:mod:`serving.config`).

Routes:

- ``POST /analyze`` (multipart ``video``, ``explain``): the full report of one video.
- ``POST /check_frame_batch`` (multipart ``frames`` x N, ``participant_id``, ``member``,
  ``cropped``): per-frame probabilities of a meeting participant's frames, the batch's
  video-only verdict and, with a participant id, the running verdict over their batches.
- ``POST /jobs`` (an upload or ``video_url``), ``GET /jobs/{id}``, ``DELETE /jobs/{id}``,
  ``GET /jobs``: durable analysis jobs (:mod:`serving.jobs`); the platform backend's
  ``POST /analyze-video`` (the same, answered ``{job_id, status_url, message}``) and
  ``POST /predict`` (JSON ``video_url``, answered with the report).
- ``GET /health/live`` (always 200), ``GET /health/ready`` (503 until a checked bundle is
  loaded), ``GET /health`` (the platform's legacy detail), ``GET /model`` (with the
  rollout: challenger, shadow agreement), ``POST /admin/reload``,
  ``GET /artifacts/{request_id}/{file}`` (explanation images), ``GET /monitoring`` (the latest
  drift report, HTML) and ``GET /monitoring/summary`` (its summary; ``/metrics`` has the
  drift flag, ``veracity_drift_detected``); BentoML's own ``/livez``,
  ``/readyz``, ``/metrics`` and the OpenAPI document at ``/docs.json``.
- ``GET /`` and ``GET /ui/{file}``: the analysts' page (``serving/ui``; open, it asks for
  a key and sends it with every call it makes).

A challenger (``VERACITY_CHALLENGER_*``) answers a canary share of requests and, in shadow
mode, scores every request beside the served model (:mod:`serving.shadow`).

Bad input never gets a 5xx: what cannot be a video is refused with a specific 4xx before
decoding (content sniffed), and what can be decoded but not judged gets ``ABSTAIN`` with
its reason (the analyzer's rules).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import bentoml
import redis
from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from serving.config import ServiceConfig
from serving.middleware import ApiKeyAuth, BodyLimit, RequestContext

with bentoml.importing():
    from serving.admission import admit
    from serving.broker import BrokerError
    from serving.fetch import FetchError, check_url, fetch_url
    from serving.jobs import JobError, JobSystem, public_report, url_policy
    from serving.jobs import public as job_public
    from serving.model import ModelHolder
    from serving.shadow import SERVED_BY, Shadow, keep_copy, route
    from veracity.frames import FrameError, ParticipantEvidence
    from veracity.logs import configure_json_logging, current_request_id, register_secret
    from veracity.modelcard import model_card
    from veracity.requestlog import RequestLog, rows_from_report

CFG = ServiceConfig.from_env()
log = logging.getLogger("serving.service")
web = FastAPI(title="Veracity", description="Audio-visual deepfake detection", version="1")

VERDICTS = bentoml.metrics.Counter(name="veracity_verdicts_total", documentation="Verdicts given, by route",
                                   labelnames=["endpoint", "verdict"])
ABSTAINS = bentoml.metrics.Counter(name="veracity_abstain_total", documentation="ABSTAIN answers by reason",
                                   labelnames=["endpoint", "reason"])
REFUSED = bentoml.metrics.Counter(name="veracity_refused_total", documentation="Requests refused with a 4xx",
                                  labelnames=["endpoint", "error"])
DRIFT = bentoml.metrics.Gauge(name="veracity_drift_detected",
                              documentation="1 when the latest drift report (veracity monitor) found drift, 0 when "
                                            "it found none, -1 when there is none or it judged nothing",
                              multiprocess_mode="livemostrecent")  # one value, not one per worker pid
JOBS = bentoml.metrics.Counter(name="veracity_jobs_total", documentation="Job events at the API",
                               labelnames=["event"])
ANALYSIS_S = bentoml.metrics.Histogram(name="veracity_analysis_seconds", documentation="Time inside the analyzer",
                                       labelnames=["endpoint"],
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
UI_DIR = Path(__file__).resolve().parent / "ui"
UI_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# The page loads nothing from elsewhere, and says so to the browser.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; media-src 'self' blob:; "
                                           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def _forms_without_urls() -> None:
    """Make BentoML's form parsing answer bad input with a 4xx, and never fetch a URL.

    BentoML 1.4's ``MultipartSerde`` (multipart and urlencoded bodies) turns a form it
    cannot parse (no boundary, a malformed body) into a 500, and takes a file field sent as
    a text value for a URL to download: a malformed or unreachable one is a 500, a reachable
    one is fetched into the server past ``VERACITY_MAX_UPLOAD_MB``. Here an unparsable form
    is a 400, and a text value is handed to validation as it is, which refuses anything but
    an uploaded file with a 400 (``Invalid file type``), as for BentoML's JSON input.
    """
    from _bentoml_impl.serde import MultipartSerde
    from bentoml.exceptions import BadInput
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    parse = MultipartSerde.parse_request

    async def parse_request(self: MultipartSerde, request: Any, cls: Any) -> Any:
        try:
            await request.form()  # parsed once; BentoML's own call gets the cached form
        except ClientDisconnect:
            raise  # the client went away (or BodyLimit has answered 413): no answer is read
        except HTTPException as exc:
            raise BadInput(f"the request body is not a valid form: {exc.detail}") from None
        except Exception as exc:  # noqa: BLE001 - whatever the form parser chokes on is the body's fault
            raise BadInput(f"the request body is not a valid form ({type(exc).__name__})") from None
        return await parse(self, request, cls)

    async def ensure_file(obj: Any) -> Any:
        return obj  # an UploadFile as it is; text is left to validation (400), never fetched

    MultipartSerde.parse_request = parse_request
    MultipartSerde.ensure_file = staticmethod(ensure_file)


_forms_without_urls()


def _error(status: int, error: str, message: str, endpoint: str, **extra: Any) -> JSONResponse:
    REFUSED.labels(endpoint=endpoint, error=error).inc()
    log.info("refused %s: %s", error, message, extra={"endpoint": endpoint, "error": error, "status": status})
    return JSONResponse({"error": error, "message": message, "request_id": current_request_id(), **extra},
                        status_code=status)


# POST /jobs and /analyze-video read their body themselves (an upload or a URL, multipart or
# JSON): this is what the OpenAPI document says they take.
_JOB_FIELDS = {"video_url": {"type": "string", "format": "uri", "description": "http(s) link to the video"},
               "explain": {"type": "boolean", "default": False}}
JOB_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "video": {"type": "string", "format": "binary", "description": "the video file"}, **_JOB_FIELDS}}},
    "application/json": {"schema": {"type": "object", "properties": _JOB_FIELDS, "required": ["video_url"]}}}}}


def _spool(src: Any, folder: Path) -> Path:
    """Copy an upload's spooled body into ``folder`` (the job directory: moved, not copied, later)."""
    fd, name = tempfile.mkstemp(prefix="incoming-", suffix=".video", dir=folder)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return Path(name)


def _slot(holder: ModelHolder) -> dict[str, Any]:
    """Which bundle a model slot serves (or why none)."""
    m = holder.loaded
    if m is None:
        return {"ready": False, "reason": holder.reason}
    return {"ready": True, "bundle_sha256": m.analyzer.identity.get("sha256"),
            "registry_version": m.source.get("registry_version"), "alias": m.source.get("alias"),
            "path": m.source.get("path") if m.source.get("kind") == "path" else None}


def _frame_rows(out: dict, rid: str, endpoint: str, latency: float, model: str, role: str = "served",
                agree: bool | None = None) -> list[dict]:
    """A frame batch as one analysed person: its frames are the media facts, video the one modality."""
    return rows_from_report({**out, "media": {"n_frames": out.get("n_frames"), "face_ratio": out.get("face_ratio")},
                             "modalities": {"video": out.get("probability")}, "judged": ["video"]},
                            request_id=rid, endpoint=endpoint, latency_s=latency, role=role, model=model, agree=agree)


def _resources() -> dict[str, Any]:
    # A GPU is asked for only when one will be used: a CPU machine must start.
    import torch

    gpu = CFG.device.startswith("cuda") or (CFG.device == "auto" and torch.cuda.is_available())
    return {"cpu": "2", "gpu": 1} if gpu else {"cpu": "2"}


@bentoml.service(name="veracity", workers=1, threads=CFG.threads, resources=_resources(),
                 traffic={"timeout": int(CFG.request_timeout_s) + 30},
                 http={"cors": {"enabled": False}})
@bentoml.asgi_app(web, path="/")
class Veracity:
    """The champion bundle behind REST routes (see the module docstring)."""

    def __init__(self) -> None:
        configure_json_logging(CFG.log_level, file=CFG.log_dir / "service.log")
        for key in CFG.api_key_list():
            register_secret(key)
        self.model = ModelHolder(CFG)
        self.model.start()
        # The challenger is loaded only when shadow mode or a canary share asks for it.
        self.challenger = ModelHolder(CFG, "challenger") if CFG.shadow or CFG.canary_share > 0 else None
        if self.challenger is not None:
            self.challenger.start()
        self.shadow = Shadow(self._log_rows)
        self.requests = RequestLog(CFG.request_log_dir)
        self.participants = ParticipantEvidence(ttl_s=CFG.participant_ttl_s)
        self.pool = ThreadPoolExecutor(max_workers=CFG.threads, thread_name_prefix="veracity-analysis")
        self.jobs: JobSystem | None = None
        self.jobs_reason: str | None = None
        try:
            jobs = JobSystem(CFG)
            jobs.start()
            self.jobs = jobs
        except (BrokerError, OSError, ValueError, redis.RedisError) as exc:
            # Synchronous routes still serve; the job routes answer 503 with this reason.
            self.jobs_reason = f"{type(exc).__name__}: {exc}"[:500]
            log.error("jobs unavailable: %s", self.jobs_reason)
        CFG.artifact_dir.mkdir(parents=True, exist_ok=True)
        self._janitor = threading.Thread(target=self._clean_artifacts, name="veracity-artifacts", daemon=True)
        self._janitor.start()
        self._monitoring_summary()  # the drift gauge from the report there is at start, then at each read
        threading.Thread(target=self._watch_drift, name="veracity-drift", daemon=True).start()
        log.info("service configured", extra={"auth": "on" if CFG.api_key_list() else "off",
                                              "max_upload_mb": CFG.max_upload_mb, "device": CFG.device})

    def __is_ready__(self) -> bool:
        return self.model.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.model.stop()
        if self.challenger is not None:
            self.challenger.stop()
        self.shadow.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.jobs is not None:
            self.jobs.stop()

    # ------------------------------------------------------------------ health

    @web.get("/health/live")
    def health_live(self) -> dict:
        """Liveness: the process answers (always 200)."""
        return {"status": "alive"}

    @web.get("/health/ready")
    def health_ready(self):
        """Readiness: 200 once a checked bundle is loaded, else 503 with the reason."""
        h = self.model.health()
        return JSONResponse({"ready": h["ready"], "reason": h["reason"]}, status_code=200 if h["ready"] else 503)

    @web.get("/health")
    def health(self) -> dict:
        """The platform's legacy health detail (always 200; read ``ready``)."""
        return {**self.model.health(), "auth": "on" if CFG.api_key_list() else "off"}

    # ------------------------------------------------------------------ the analysts' page

    @web.get("/", include_in_schema=False)
    def page(self):
        """The analysts' page: submit, follow, see why (``serving/ui/index.html``)."""
        return FileResponse(UI_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache", **PAGE_HEADERS})

    @web.get("/ui/{name}", include_in_schema=False)
    def page_asset(self, name: str):
        """The page's scripts and styles, from ``serving/ui`` (nothing else)."""
        kind = UI_TYPES.get(Path(name).suffix)
        if kind is None or not _SAFE.match(name) or not (UI_DIR / name).is_file():
            return JSONResponse({"error": "not_found", "message": "no such page asset"}, status_code=404)
        return FileResponse(UI_DIR / name, media_type=kind, headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ model

    @web.get("/model")
    def model_info(self):
        """Bundle and registry version, members, thresholds, data contract, model card."""
        m = self.model.loaded
        if m is None:
            return JSONResponse({"error": "not_ready", "message": self.model.reason}, status_code=503)
        b = m.analyzer.bundle
        spec = b.spec
        return {
            "bundle_sha256": m.analyzer.identity.get("sha256"), "bundle_format_version": spec.get("version"),
            "registry": {k: m.source.get(k) for k in ("model_uri", "model_name", "registry_version", "alias", "run_id")},
            "members": [{"name": x.name, "modality": x.modality, "detector": x.detector, "target": x.target}
                        for x in b.members],
            "fusion": b.fusion.rule, "thresholds": b.thresholds.to_dict(),
            "modality_thresholds": {k: v.to_dict() for k, v in (getattr(b, "modality_thresholds", None) or {}).items()},
            "evidence": vars(b.evidence) if b.evidence is not None else None,
            # The rule, not its reference patterns (validation scores are not the client's business).
            "disagreement": ({k: v for k, v in b.disagreement.to_dict().items() if k != "reference"}
                             if getattr(b, "disagreement", None) is not None else None),
            # Who takes over when members give no answer (veracity.decision.Fallback).
            "fallbacks": [{"members": list(f.members), "thresholds": f.thresholds.to_dict()}
                          for f in getattr(b, "fallbacks", {}).values()],
            "contract": b.contract.to_dict(), "metrics": spec.get("metrics"),
            "limits": {"max_upload_mb": CFG.max_upload_mb, "max_duration_s": CFG.max_duration_s,
                       "job_max_duration_s": CFG.job_max_duration_s},
            "rollout": self._rollout(),
            "model_card": model_card(spec, extra={"model_name": m.source.get("model_name"),
                                                  "version": m.source.get("registry_version")}),
        }

    # ------------------------------------------------------------------ monitoring

    @web.get("/monitoring")
    def monitoring_report(self):
        """The latest drift report (Evidently HTML written by ``veracity monitor``), 404 before the first."""
        path = CFG.monitor_dir / "report.html"
        if not path.is_file():
            return JSONResponse({"error": "not_found", "message": f"no drift report yet: run `veracity monitor "
                                                                  f"--out {CFG.monitor_dir}`"}, status_code=404)
        return FileResponse(path, media_type="text/html")

    @web.get("/monitoring/summary")
    def monitoring_summary(self):
        """The latest drift report's summary (status, drifted columns and rates, what they ask of an operator)."""
        summary = self._monitoring_summary()
        if summary is None:
            return JSONResponse({"error": "not_found", "message": "no readable drift summary yet"}, status_code=404)
        return summary

    def _monitoring_summary(self) -> dict[str, Any] | None:
        """The summary file, read now; also sets the drift gauge (-1 without one)."""
        try:
            summary = json.loads((CFG.monitor_dir / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        flag = summary.get("drift_detected") if isinstance(summary, dict) else None
        DRIFT.set(-1 if flag is None else int(bool(flag)))
        return summary if isinstance(summary, dict) else None

    def _watch_drift(self) -> None:
        while True:  # a report written while the service runs reaches /metrics within a minute
            time.sleep(60.0)
            self._monitoring_summary()

    @web.post("/admin/reload")
    def reload(self):
        """Check the registry now (champion and challenger aliases) instead of at the next poll.

        A new bundle is loaded and checked beside the old one, then swapped in: requests in
        flight finish on the bundle they started with. Needs the API key.
        """
        changed = {"champion": self.model.load_once()}
        if self.challenger is not None:
            changed["challenger"] = self.challenger.load_once()
        log.info("reload requested", extra={"changed": changed})
        return {"changed": changed, "champion": _slot(self.model), "rollout": self._rollout()}

    def _rollout(self) -> dict[str, Any]:
        return {"shadow": CFG.shadow, "canary_share": CFG.canary_share,
                "challenger": _slot(self.challenger) if self.challenger is not None else None,
                "agreement": self.shadow.stats()}

    @web.get("/artifacts/{request_id}/{name}")
    def artifact(self, request_id: str, name: str):
        """An explanation image written by ``/analyze?explain=true`` (kept ``VERACITY_ARTIFACT_TTL_S``)."""
        if not (_SAFE.match(request_id) and _SAFE.match(name)):
            return JSONResponse({"error": "not_found", "message": "no such artifact"}, status_code=404)
        path = CFG.artifact_dir / request_id / name
        if not path.is_file():
            return JSONResponse({"error": "not_found", "message": "no such artifact (expired or never made)"},
                                status_code=404)
        return FileResponse(path, media_type="image/png")

    # ------------------------------------------------------------------ analysis

    @bentoml.api(route="/analyze")
    def analyze(self, video: Path, explain: bool = False) -> dict:
        """Analyse one uploaded video: verdict, calibrated probability, members, timeline,
        suspicious frames, persons; ``explain=true`` adds Grad-CAM overlay links."""
        endpoint = "analyze"
        try:
            return self._analyze(video, explain, endpoint)
        finally:
            Path(video).unlink(missing_ok=True)

    def _analyze(self, video: Path, explain: bool, endpoint: str) -> Any:
        t0 = time.perf_counter()
        rid = current_request_id() or "request"
        pick = self._pick()
        if pick is None:
            return _error(503, "not_ready", f"the service is not ready: {self.model.reason}", endpoint)
        (served_by, analyzer), other = pick
        refusal = admit(video, max_duration_s=CFG.max_duration_s, max_pixels=CFG.max_pixels,
                        duration_setting="VERACITY_MAX_DURATION_S", too_long_hint="; submit it as a job (POST /jobs)")
        if refusal is not None:
            return _error(refusal.status, refusal.error, refusal.message, endpoint, **refusal.extra)
        explain_dir = CFG.artifact_dir / rid if explain else None
        future = self.pool.submit(analyzer.analyze, video, explain, explain_dir)
        try:
            report = future.result(timeout=CFG.request_timeout_s)
        except FutureTimeout:
            future.cancel()
            return _error(422, "time_limit", f"analysis did not finish within {CFG.request_timeout_s:g} s "
                                             "(VERACITY_REQUEST_TIMEOUT_S); submit long videos as jobs", endpoint)
        ANALYSIS_S.labels(endpoint=endpoint).observe(report.timings.get("total_s", 0.0))
        latency = time.perf_counter() - t0
        self._count(endpoint, report.verdict, report.reason, served_by)
        self._log_rows(rows_from_report(report, request_id=rid, endpoint=endpoint, latency_s=latency,
                                        model=served_by))
        if other is not None:
            copy, cleanup = keep_copy(video)  # the request deletes its upload when it returns
            shadow_model, shadow_analyzer = other
            self.shadow.submit(endpoint, report.verdict, lambda: shadow_analyzer.analyze(copy),
                               lambda rep, agree, s: rows_from_report(rep, request_id=rid, endpoint=endpoint,
                                                                      latency_s=s, role="shadow",
                                                                      model=shadow_model, agree=agree),
                               cleanup)
        out = public_report(report, rid, "upload")  # the server's temporary file name means nothing
        out["request_id"] = rid
        out["served_by"] = served_by
        return out

    @bentoml.api(route="/check_frame_batch")
    def check_frame_batch(self, frames: list[Path], participant_id: str | None = None, member: str | None = None,
                          cropped: bool = False) -> dict:
        """Score a meeting participant's frames (JPEG/PNG): per-frame probabilities, the
        batch's pooled video-only probability and verdict, and with ``participant_id`` the
        running verdict over that participant's recent batches."""
        endpoint = "check_frame_batch"
        try:
            return self._frames(frames, participant_id, member, cropped, endpoint)
        finally:
            for f in frames:
                Path(f).unlink(missing_ok=True)

    def _frames(self, frames: list[Path], participant_id: str | None, member: str | None, cropped: bool,
                endpoint: str) -> Any:
        t0 = time.perf_counter()
        rid = current_request_id() or "request"
        pick = self._pick(participant_id)
        if pick is None:
            return _error(503, "not_ready", f"the service is not ready: {self.model.reason}", endpoint)
        (served_by, analyzer), other = pick
        if not frames:
            return _error(400, "empty_batch", "no frames in the batch (multipart field 'frames')", endpoint)
        if len(frames) > CFG.max_frames:
            return _error(413, "too_many_frames", f"{len(frames)} frames exceed the limit of {CFG.max_frames} "
                                                  "(VERACITY_MAX_FRAMES)", endpoint)
        if participant_id is not None and not _SAFE.match(participant_id):
            return _error(400, "bad_participant_id", "participant_id must be 1-128 of [A-Za-z0-9._-]", endpoint)
        images = [Path(f).read_bytes() for f in frames]
        try:
            report = analyzer.check_frames(images, member=member, cropped=cropped)
        except FrameError as exc:
            status = 413 if exc.reason in ("too_large", "too_many_frames") else 400
            return _error(status, exc.reason, exc.message, endpoint)
        out = report.to_dict()
        if participant_id is not None:
            out["participant_id"] = participant_id
            # Keyed by model too: a running verdict never pools two bundles' probabilities.
            key = participant_id if served_by == "champion" else f"{participant_id}@challenger"
            out["running"] = self.participants.update(key, report)
        latency = time.perf_counter() - t0
        ANALYSIS_S.labels(endpoint=endpoint).observe(latency)
        self._count(endpoint, out.get("verdict"), out.get("reason"), served_by)
        self._log_rows(_frame_rows(out, rid, endpoint, latency, served_by))
        if other is not None:
            shadow_model, shadow_analyzer = other
            self.shadow.submit(endpoint, out.get("verdict"),
                               lambda: shadow_analyzer.check_frames(images, member=member, cropped=cropped).to_dict(),
                               lambda rep, agree, s: _frame_rows(rep, rid, endpoint, s, shadow_model, "shadow", agree))
        out["request_id"] = rid
        out["served_by"] = served_by
        return out

    # ------------------------------------------------------------------ jobs

    @web.post("/jobs", status_code=202, openapi_extra=JOB_BODY)
    async def submit_job(self, request: Request):
        """Queue a video for analysis: a multipart ``video`` upload, or ``video_url``
        (http/https; form field or JSON body), optional ``explain``. ``202`` with ``job_id``
        and ``status_url``; poll ``GET /jobs/{job_id}``."""
        out = await self._submit(request, "jobs")
        if isinstance(out, JSONResponse):
            return out
        return JSONResponse(out, status_code=202, headers={"Location": out["status_url"]})

    @web.post("/analyze-video", status_code=202, openapi_extra=JOB_BODY)
    async def analyze_video(self, request: Request):
        """The platform backend's name for ``POST /jobs``: ``{job_id, status_url, message}``."""
        out = await self._submit(request, "analyze-video")
        if isinstance(out, JSONResponse):
            return out
        return JSONResponse({"job_id": out["job_id"], "status_url": out["status_url"],
                             "message": "accepted: poll status_url for the result"}, status_code=202,
                            headers={"Location": out["status_url"]})

    @bentoml.api(route="/predict")
    def predict(self, video_url: str) -> dict:
        """The platform backend's synchronous route: the report of the short clip at ``video_url``."""
        endpoint = "predict"
        with tempfile.TemporaryDirectory(prefix="veracity-predict-") as tmp:
            path = Path(tmp) / "video"
            try:
                fetch_url(video_url, path, url_policy(CFG))
            except FetchError as exc:
                return _error(exc.status, exc.reason, exc.message, endpoint)
            return self._analyze(path, False, endpoint)

    async def _submit(self, request: Request, endpoint: str) -> Any:
        """Parse a job submission (multipart or JSON) and accept it, or the 4xx/503 why not."""
        if self.jobs is None:
            return self._jobs_down(endpoint)
        ctype = request.headers.get("content-type", "")
        upload, video_url, explain, name = None, None, False, None
        try:
            if ctype.startswith("application/json"):
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("a JSON object is expected")
                video_url, explain = body.get("video_url"), bool(body.get("explain", False))
            elif ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                form = await request.form()
                video, video_url = form.get("video"), form.get("video_url")
                explain = str(form.get("explain", "false")).lower() in ("1", "true", "yes", "on")
                if isinstance(video, str):
                    raise ValueError("'video' must be an uploaded file (use video_url for a link)")
                if video is not None:
                    name = Path(video.filename or "upload").name
                    upload = await run_in_threadpool(_spool, video.file, self.jobs.uploads)
            else:
                return _error(415, "unsupported_media_type", "send multipart/form-data (video or video_url) or "
                                                             "JSON ({\"video_url\": ...})", endpoint)
        except ClientDisconnect:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the parsers choke on is the body's fault
            return _error(400, "bad_request", f"the request body could not be read: {str(exc)[:200]}", endpoint)
        try:
            if video_url is not None and not isinstance(video_url, str):
                return _error(400, "bad_request", "'video_url' must be text (an http or https link)", endpoint)
            owner = getattr(request.state, "api_key_id", None)
            return await run_in_threadpool(self._accept, upload, video_url, explain, name, endpoint, owner)
        finally:
            if upload is not None:  # an accepted upload was moved into the job's place already
                upload.unlink(missing_ok=True)

    def _accept(self, upload: Path | None, video_url: str | None, explain: bool, name: str | None,
                endpoint: str, owner: str | None = None) -> Any:
        assert self.jobs is not None
        try:
            if video_url is not None and upload is None:
                check_url(video_url, url_policy(CFG))
            elif upload is not None and video_url is None:
                refusal = admit(upload, max_duration_s=CFG.job_max_duration_s, max_pixels=CFG.max_pixels,
                                duration_setting="VERACITY_JOB_MAX_DURATION_S")
                if refusal is not None:
                    return _error(refusal.status, refusal.error, refusal.message, endpoint, **refusal.extra)
            rec = self.jobs.submit(upload=upload, video_url=video_url, explain=explain, filename=name, owner=owner)
        except FetchError as exc:
            return _error(exc.status, exc.reason, exc.message, endpoint)
        except JobError as exc:
            return _error(exc.status, exc.error, exc.message, endpoint)
        JOBS.labels(event="accepted").inc()
        log.info("job accepted", extra={"job_id": rec["id"], "source": rec.get("source")})
        return {**job_public(rec), "request_id": current_request_id()}

    @web.get("/jobs/{job_id}")
    def job_status(self, job_id: str):
        """A job's state (``queued``, ``running`` with progress, ``done`` with the report,
        ``failed`` with its error, ``cancelled``), timestamps and the bundle that ran it."""
        rec = self._job(job_id)
        return rec if isinstance(rec, JSONResponse) else job_public(rec)

    @web.delete("/jobs/{job_id}")
    def job_cancel(self, job_id: str):
        """Cancel a job: a queued one at once, a running one at its next phase."""
        rec = self._job(job_id)
        if isinstance(rec, JSONResponse):
            return rec
        outcome = self.jobs.cancel(job_id)
        if outcome in ("done", "failed"):
            return JSONResponse({"error": "already_ended", "message": f"the job has already ended ({outcome})",
                                 "state": outcome}, status_code=409)
        JOBS.labels(event="cancel_requested").inc()
        rec = self.jobs.store.get(job_id) or rec
        return JSONResponse({**job_public(rec), "cancel": outcome}, status_code=202 if outcome == "cancelling" else 200)

    @web.get("/jobs")
    def job_list(self, request: Request, limit: int = 50):
        """The most recent jobs (newest first, at most ``limit``, 500 at most): with API keys
        on, those submitted with the caller's key."""
        if self.jobs is None:
            return self._jobs_down("jobs")
        limit = max(1, min(int(limit), 500))
        owner = getattr(request.state, "api_key_id", None)
        # Jobs of other keys are skipped: look a few pages deep for this key's.
        ids = self.jobs.store.ids(limit if owner is None else 10 * limit)
        recs = [r for r in (self.jobs.store.get(i) for i in ids) if r and (owner is None or r.get("owner") == owner)]
        return {"jobs": [{k: v for k, v in job_public(r).items() if k != "result"} for r in recs[:limit]]}

    def _jobs_down(self, endpoint: str) -> JSONResponse:
        return _error(503, "jobs_unavailable", f"the job queue is not running: {self.jobs_reason}", endpoint)

    def _job(self, job_id: str) -> Any:
        if self.jobs is None:
            return self._jobs_down("jobs")
        if not _SAFE.match(job_id):
            return JSONResponse({"error": "not_found", "message": "no such job"}, status_code=404)
        try:
            rec = self.jobs.store.get(job_id)
        except redis.RedisError as exc:
            return JSONResponse({"error": "jobs_unavailable", "message": f"the job store is unavailable "
                                                                        f"({type(exc).__name__})"}, status_code=503)
        if rec is None:
            return JSONResponse({"error": "not_found", "message": "no such job (or its record expired)"},
                                status_code=404)
        return rec

    # ------------------------------------------------------------------ helpers

    def _pick(self, key: str | None = None) -> Any:
        """((served_by, analyzer), (shadow model, analyzer) or None), or None when not ready."""
        champion = self.model.analyzer()
        if champion is None:
            return None
        challenger = self.challenger.analyzer() if self.challenger is not None else None
        return route(champion, challenger, CFG.canary_share, CFG.shadow, key)

    def _count(self, endpoint: str, verdict: str | None, reason: str | None, served_by: str = "champion") -> None:
        SERVED_BY.labels(endpoint=endpoint, model=served_by).inc()
        VERDICTS.labels(endpoint=endpoint, verdict=verdict or "none").inc()
        if verdict == "ABSTAIN":
            ABSTAINS.labels(endpoint=endpoint, reason=reason or "unknown").inc()

    def _log_rows(self, rows: list[dict]) -> None:
        try:
            self.requests.append(rows)
        except Exception:  # noqa: BLE001 - monitoring must never cost a client its answer
            log.warning("request log append failed", exc_info=True)

    def _clean_artifacts(self) -> None:
        while True:
            time.sleep(min(60.0, CFG.artifact_ttl_s))
            cutoff = time.time() - CFG.artifact_ttl_s
            for d in CFG.artifact_dir.glob("*"):
                try:
                    if d.is_dir() and d.stat().st_mtime < cutoff:
                        shutil.rmtree(d, ignore_errors=True)
                except OSError:
                    pass


# Outermost first (BentoML keeps the order, Starlette wraps the first added outermost): every
# request gets an id and its access event, then the key is checked, then the body counted.
Veracity.add_asgi_middleware(RequestContext)
Veracity.add_asgi_middleware(ApiKeyAuth, keys=CFG.api_key_list(), open_prefixes=CFG.open_prefixes)
Veracity.add_asgi_middleware(BodyLimit, max_bytes=int(CFG.max_upload_mb * 2**20))
