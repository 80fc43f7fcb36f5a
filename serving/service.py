"""The BentoML service: routes, limits and logging around :class:`veracity.analyzer.Analyzer`.

Start it with ``make serve`` / ``veracity serve`` (``bentoml serve serving.service:Veracity``).
Settings come from ``VERACITY_*`` variables (:mod:`serving.config`).

Routes:

- ``POST /analyze`` (multipart ``video``, ``explain``): the full report of one video.
- ``POST /check_frame_batch`` (multipart ``frames`` x N, ``participant_id``, ``member``,
  ``cropped``): per-frame probabilities of a meeting participant's frames, the batch's
  video-only verdict and, with a participant id, the running verdict over their batches.
- ``GET /health/live`` (always 200), ``GET /health/ready`` (503 until a checked bundle is
  loaded), ``GET /health`` (the platform's legacy detail), ``GET /model``,
  ``GET /artifacts/{request_id}/{file}`` (explanation images); BentoML's own ``/livez``,
  ``/readyz``, ``/metrics`` and the OpenAPI document at ``/docs.json``.

Bad input never gets a 5xx: what cannot be a video is refused with a specific 4xx before
decoding (content sniffed), and what can be decoded but not judged gets ``ABSTAIN`` with
its reason (the analyzer's rules).
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import bentoml
from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.responses import JSONResponse

from serving.config import ServiceConfig
from serving.middleware import ApiKeyAuth, BodyLimit, RequestContext

with bentoml.importing():
    from serving.model import ModelHolder
    from veracity.frames import FrameError, ParticipantEvidence
    from veracity.logs import configure_json_logging, current_request_id, register_secret
    from veracity.media.decode import MediaError, probe
    from veracity.media.sniff import HEAD_BYTES, sniff
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
ANALYSIS_S = bentoml.metrics.Histogram(name="veracity_analysis_seconds", documentation="Time inside the analyzer",
                                       labelnames=["endpoint"],
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))

_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


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
        self.requests = RequestLog(CFG.request_log_dir)
        self.participants = ParticipantEvidence(ttl_s=CFG.participant_ttl_s)
        self.pool = ThreadPoolExecutor(max_workers=CFG.threads, thread_name_prefix="veracity-analysis")
        CFG.artifact_dir.mkdir(parents=True, exist_ok=True)
        self._janitor = threading.Thread(target=self._clean_artifacts, name="veracity-artifacts", daemon=True)
        self._janitor.start()
        log.info("service configured", extra={"auth": "on" if CFG.api_key_list() else "off",
                                              "max_upload_mb": CFG.max_upload_mb, "device": CFG.device})

    def __is_ready__(self) -> bool:
        return self.model.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.model.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

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
            "contract": b.contract.to_dict(), "metrics": spec.get("metrics"),
            "model_card": model_card(spec, extra={"model_name": m.source.get("model_name"),
                                                  "version": m.source.get("registry_version")}),
        }

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
        analyzer = self.model.analyzer()
        if analyzer is None:
            return _error(503, "not_ready", f"the service is not ready: {self.model.reason}", endpoint)
        with open(video, "rb") as f:
            kind = sniff(f.read(HEAD_BYTES))
        if kind.kind == "empty":
            return _error(400, "empty", "the uploaded file is empty", endpoint)
        if kind.kind == "image":
            return _error(415, "still_image", f"a still image ({kind.format}), not a video: send frames to "
                                              "/check_frame_batch", endpoint)
        if kind.kind == "audio":
            return _error(415, "audio_only", f"an audio file ({kind.format}) without video: nothing to look at",
                          endpoint)
        if kind.kind == "text":
            return _error(415, "not_media", "the upload is text, not a video", endpoint)
        try:
            info = probe(video)
        except MediaError:
            info = None  # the analyzer turns it into ABSTAIN with extraction's reason
        if info is not None:
            if info.duration_s is not None and info.duration_s > CFG.max_duration_s:
                return _error(413, "too_long", f"{info.duration_s:.0f} s of video exceeds the service's limit of "
                                               f"{CFG.max_duration_s:g} s (VERACITY_MAX_DURATION_S); submit it as a job",
                              endpoint, limit_s=CFG.max_duration_s)
            if info.width and info.height and info.width * info.height > CFG.max_pixels:
                return _error(413, "too_large_frame", f"{info.width}x{info.height} frames exceed the limit of "
                                                      f"{CFG.max_pixels} pixels (VERACITY_MAX_PIXELS)", endpoint)
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
        self._count(endpoint, report.verdict, report.reason)
        self._log_rows(rows_from_report(report, request_id=rid, endpoint=endpoint, latency_s=latency))
        out = report.to_dict()
        out["path"] = "upload"  # the server's temporary file name means nothing to the client
        out["request_id"] = rid
        if out.get("explanations"):
            for o in out["explanations"].get("overlays", []):
                if o.get("png"):
                    o["png"] = f"/artifacts/{rid}/{Path(o['png']).name}"
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
        analyzer = self.model.analyzer()
        if analyzer is None:
            return _error(503, "not_ready", f"the service is not ready: {self.model.reason}", endpoint)
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
            out["running"] = self.participants.update(participant_id, report)
        latency = time.perf_counter() - t0
        ANALYSIS_S.labels(endpoint=endpoint).observe(latency)
        self._count(endpoint, out.get("verdict"), out.get("reason"))
        # The batch as one analysed person: its frames are the media facts, video the one modality.
        self._log_rows(rows_from_report({**out, "media": {"n_frames": out.get("n_frames"),
                                                          "face_ratio": out.get("face_ratio")},
                                         "modalities": {"video": out.get("probability")}},
                                        request_id=rid, endpoint=endpoint, latency_s=latency))
        out["request_id"] = rid
        return out

    # ------------------------------------------------------------------ helpers

    def _count(self, endpoint: str, verdict: str | None, reason: str | None) -> None:
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
