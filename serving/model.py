"""Which bundle the service serves, and whether it may answer (readiness).

:class:`ModelHolder` resolves the bundle (a directory from ``VERACITY_BUNDLE``, or the
registry's ``models:/veracity-detector@champion``), loads it through
:class:`veracity.analyzer.Analyzer` (every checksum verified), checks the runtime (PyAV's
FFmpeg, torch, CUDA when asked for) and runs a forward pass on a dummy window before it
reports ready. It never serves random weights: until all of that holds the service is alive
but not ready, and ``/health`` says why. A background thread retries while not ready and,
once ready, moves to a new champion when the alias moves (the new analyzer is built and
checked first; requests in flight finish on the old one).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from serving.config import ServiceConfig
from veracity.analyzer import Analyzer, BundleError
from veracity.config import AnalyzeConfig
from veracity.models.base import Batch

log = logging.getLogger("serving.model")


@dataclass
class Loaded:
    """A loaded, checked bundle and where it came from."""

    analyzer: Analyzer
    source: dict[str, Any]
    checks: dict[str, Any]
    loaded_at: float = field(default_factory=time.time)


def runtime_checks(device: str) -> dict[str, Any]:
    """Versions of what analysis needs; raises RuntimeError when something is missing."""
    import av

    checks: dict[str, Any] = {"torch": torch.__version__, "av": av.__version__,
                              "ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()},
                              "cuda_available": torch.cuda.is_available()}
    codecs = {"h264": "h264" in av.codecs_available, "aac": "aac" in av.codecs_available}
    checks["codecs"] = codecs
    if not all(codecs.values()):
        raise RuntimeError(f"PyAV's FFmpeg lacks decoders: {[k for k, v in codecs.items() if not v]}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"VERACITY_DEVICE={device} but torch sees no CUDA device")
    if torch.cuda.is_available():
        checks["cuda_device"] = torch.cuda.get_device_name(0)
    return checks


def dummy_batch(analyzer: Analyzer, n: int = 2) -> Batch:
    """A batch of blank windows in the bundle's contract (shapes only; content irrelevant)."""
    c = analyzer.contract
    t, s = c.frames_per_window, c.face_size
    fs = max(8, s // 2)
    n_audio = c.audio_samples_per_window
    return Batch(video=torch.zeros(n, t, 3, s, s), flow=torch.zeros(n, t, 2, fs, fs),
                 audio=torch.zeros(n, n_audio), vad=torch.zeros(n, max(1, int(round(c.window_seconds / 0.01))),
                                                                dtype=torch.bool),
                 video_present=torch.ones(n, dtype=torch.bool), audio_present=torch.ones(n, dtype=torch.bool))


def forward_check(analyzer: Analyzer) -> dict[str, float]:
    """Every member's logits on a dummy batch; raises RuntimeError if any is not finite."""
    t = time.perf_counter()
    out = analyzer.bundle.window_logits(dummy_batch(analyzer))
    bad = [k for k, v in out.items() if not np.all(np.isfinite(v))]
    if bad:
        raise RuntimeError(f"members {bad} give non-finite logits on a dummy window")
    return {"forward_s": round(time.perf_counter() - t, 4), "members": len(out)}


class ModelHolder:
    """The served analyzer, its provenance and the readiness state (thread-safe).

    ``role`` is ``champion`` (``VERACITY_BUNDLE`` / ``VERACITY_MODEL_URI``) or ``challenger``
    (``VERACITY_CHALLENGER_BUNDLE`` / ``VERACITY_CHALLENGER_URI``: shadow mode and canary).
    A missing challenger is normal (no alias yet), so it is reported quietly.
    """

    def __init__(self, cfg: ServiceConfig, role: str = "champion"):
        if role not in ("champion", "challenger"):
            raise ValueError(f"role must be champion or challenger, got {role!r}")
        self.cfg = cfg
        self.role = role
        self.bundle = cfg.bundle if role == "champion" else cfg.challenger_bundle
        self.model_uri = cfg.model_uri if role == "champion" else cfg.challenger_uri
        self._lock = threading.Lock()
        self._loaded: Loaded | None = None
        self.reason: str | None = "starting: the model has not been loaded yet"
        self.attempts = 0
        self.last_attempt: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- state

    @property
    def loaded(self) -> Loaded | None:
        return self._loaded

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def analyzer(self) -> Analyzer | None:
        m = self._loaded
        return m.analyzer if m is not None else None

    # ----------------------------------------------------------------- loading

    def _resolve(self) -> tuple[Any, dict[str, Any]]:
        from veracity.tracking import resolve_bundle, tracking_uri

        if self.bundle is not None:
            return self.bundle, {"kind": "path", "path": str(self.bundle), "registry_version": None,
                                 "alias": None, "model_uri": None}
        reg = resolve_bundle(self.model_uri, self.cfg.project_root, self.cfg.cache_dir)
        return reg.path, {"kind": "registry", "path": str(reg.path), "model_uri": reg.uri, "model_name": reg.name,
                          "registry_version": reg.version, "alias": reg.alias, "run_id": reg.run_id,
                          "tracking_uri": tracking_uri(self.cfg.project_root)}

    def load_once(self) -> bool:
        """One attempt to (re)load; returns True when a new bundle was put in service."""
        from veracity.tracking import RegistryError

        self.attempts += 1
        self.last_attempt = time.time()
        try:
            path, source = self._resolve()
            current = self._loaded
            if current is not None and current.source.get("path") == source["path"]:
                return False  # the alias still points at what we serve
            checks = runtime_checks(self.cfg.device)
            analyzer = Analyzer(path, device=self.cfg.device, runtime=self.cfg.runtime,
                                cfg=AnalyzeConfig(precision=self.cfg.precision),
                                batch_windows=self.cfg.batch_windows, batch_wait_s=self.cfg.batch_wait_ms / 1000,
                                member_timeout_s=self.cfg.member_timeout_s)
            checks["forward"] = forward_check(analyzer)
            checks["device"] = str(analyzer.bundle.device)
            checks["precision"] = analyzer.identity["precision"]
        except (RegistryError, BundleError, RuntimeError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
            if self._loaded is None:
                if reason != self.reason:
                    log.log(logging.WARNING if self.role == "champion" else logging.INFO,
                            "%s not loaded: %s", self.role, reason)
                self.reason = reason
            else:  # keep serving the bundle we have; a broken new champion is not taken
                log.warning("a new model could not be loaded; still serving %s: %s",
                            self._loaded.source.get("registry_version") or self._loaded.source.get("path"), reason)
            return False
        with self._lock:
            previous = self._loaded
            self._loaded = Loaded(analyzer, source, checks)
            self.reason = None
        if previous is not None:
            previous.analyzer.close()  # requests in flight on it finish without its batcher
        log.info("%s: bundle %s (%s, registry version %s) on %s", self.role, analyzer.identity.get("sha256"),
                 source["path"], source.get("registry_version"), checks["device"],
                 extra={"bundle_sha256": analyzer.identity.get("sha256"), "checks": checks,
                        "previous": previous.source.get("registry_version") if previous else None})
        return True

    def start(self) -> None:
        """Load now if possible, then keep watching in a daemon thread."""
        self.load_once()
        self._thread = threading.Thread(target=self._watch, name="veracity-model-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            # A bundle given as a path is fixed; only the registry can move.
            if self.bundle is None or self._loaded is None:
                self.load_once()

    def stop(self) -> None:
        self._stop.set()

    # ----------------------------------------------------------------- reporting

    def health(self) -> dict[str, Any]:
        """The legacy ``/health`` body the platform's probes read."""
        m = self._loaded
        out: dict[str, Any] = {"status": "ok" if m is not None else "not_ready", "ready": m is not None,
                               "model_loaded": m is not None, "reason": self.reason,
                               "load_attempts": self.attempts}
        if m is not None:
            ident = m.analyzer.identity
            out.update(bundle_sha256=ident.get("sha256"), bundle_version=m.analyzer.bundle.spec.get("version"),
                       checkpoint_path=m.source["path"], registry_version=m.source.get("registry_version"),
                       alias=m.source.get("alias"), model_uri=m.source.get("model_uri"),
                       device=m.checks.get("device"), loaded_at=_iso(m.loaded_at), runtime=m.checks)
        return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if math.isfinite(t) else ""
