"""The service's settings, read once from ``VERACITY_*`` environment variables.

Every variable, its default and meaning is listed in :class:`ServiceConfig` (README's
"Serve" section is generated from the same field descriptions by ``veracity serve --help-env``
and must not restate them). Values are validated at start-up: a bad value stops the service
with a message naming the variable, rather than serving with a silent default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from veracity.config import Precision

PREFIX = "VERACITY_"
MIN_KEY_LEN = 16  # a guessable key is no key


class ServiceConfig(BaseModel):
    """Service settings; the environment variable of field ``x`` is ``VERACITY_X``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: Path | None = Field(None, description="a bundle directory to serve; overrides model_uri")
    model_uri: str = Field("models:/veracity-detector@champion",
                           description="registry model to serve (models:/<name>@<alias> or models:/<name>/<version>)")
    project_root: Path = Field(Path("."), description="project whose mlflow.db is the registry "
                                                      "(MLFLOW_TRACKING_URI overrides)")
    cache_dir: Path = Field(Path("var/serving/models"), description="where registry versions are downloaded")
    device: str = Field("auto", description="auto (CUDA when present), cpu or cuda[:N]")
    challenger_uri: str = Field("models:/veracity-detector@challenger",
                                description="the challenger for shadow mode and canary (registry alias)")
    challenger_bundle: Path | None = Field(None, description="a challenger bundle directory; overrides "
                                                             "challenger_uri")
    shadow: bool = Field(False, description="also score every analysis with the challenger (when one "
                                            "exists): logged and counted, never returned")
    canary_share: float = Field(0.0, ge=0.0, le=1.0, description="share of /analyze and /check_frame_batch "
                                                                 "requests answered by the challenger (marked "
                                                                 "served_by in the answer and the log)")
    runtime: Literal["torch", "onnx"] = Field("torch", description="torch, or onnx for members with an ONNX export")
    precision: Precision = Field(
        "auto", description="the PyTorch members' forward passes: auto (bf16 on a CUDA GPU that has it, fp32 on "
                            "CPU), fp32 or bf16")
    poll_s: float = Field(10.0, gt=0, description="seconds between registry checks (retry while not ready; "
                                                  "pick up a new champion once ready)")
    api_keys: str = Field("", description="comma-separated API keys; empty and no api_keys_file = no auth")
    api_keys_file: Path | None = Field(None, description="file with one API key per line (# comments)")
    open_paths: str = Field("/,/ui,/health,/livez,/readyz,/healthz,/metrics,/docs.json,/schema.json",
                            description="comma-separated path prefixes served without an API key "
                                        "(`/` is the analyst page alone; it asks for a key)")
    max_upload_mb: float = Field(200.0, gt=0, description="largest request body, MiB (413 beyond)")
    max_duration_s: float = Field(600.0, gt=0, description="longest video /analyze accepts, seconds")
    max_pixels: int = Field(3840 * 2160, gt=0, description="largest frame (width x height) accepted")
    max_frames: int = Field(128, gt=0, description="most frames in one /check_frame_batch")
    request_timeout_s: float = Field(300.0, gt=0, description="per-request time limit for an analysis")
    participant_ttl_s: float = Field(120.0, gt=0, description="seconds a meeting participant's evidence is kept")
    threads: int = Field(4, ge=1, description="requests handled at once per worker")
    member_timeout_s: float = Field(60.0, gt=0, description="each member's time limit per forward pass; a member "
                                                          "past it (or failing) is left out and named in the report")
    batch_windows: int = Field(64, ge=0, description="join concurrent requests' windows in member forward passes "
                                                     "of up to this many (0 = each request on its own)")
    batch_wait_ms: float = Field(10.0, ge=0, description="longest a batch waits for other requests' windows "
                                                         "(only while other requests are being scored)")
    log_dir: Path = Field(Path("var/serving/logs"), description="JSON log files (rotated)")
    log_level: str = Field("INFO", description="log level of the service's own loggers")
    request_log_dir: Path = Field(Path("var/serving/requests"),
                                  description="request log for monitoring (SQLite, rotated)")
    monitor_dir: Path = Field(Path("var/serving/monitoring"),
                              description="where `veracity monitor` writes its latest drift report, served at "
                                          "/monitoring (HTML) and /monitoring/summary (JSON)")
    artifact_dir: Path = Field(Path("var/serving/artifacts"),
                               description="Grad-CAM overlays of explain=true, served under /artifacts")
    artifact_ttl_s: float = Field(3600.0, gt=0, description="seconds explanation images are kept")
    broker_url: str = Field("", description="Celery broker for jobs (redis://host:6379/0); empty = the embedded "
                                            "redis-server under job_dir/broker, started by the service")
    job_dir: Path = Field(Path("var/serving/jobs"), description="uploaded job videos until their job ends "
                                                               "(shared storage when workers run elsewhere)")
    job_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        1, description="job worker processes the service starts and restarts (0 when `veracity worker` runs "
                       "elsewhere; auto: one per core), the cores shared out among them; each loads the model")
    job_timeout_s: float = Field(1800.0, gt=0, description="time limit of one job; the broker redelivers a "
                                                           "job whose worker died after this plus 20 s")
    job_max_attempts: int = Field(3, ge=1, description="deliveries of a job before it fails as worker_lost")
    job_max_duration_s: float = Field(7200.0, gt=0, description="longest video a job accepts, seconds")
    job_ttl_s: float = Field(7 * 86400.0, gt=0, description="seconds a finished job's record is kept")
    url_allow_networks: str = Field("", description="comma-separated CIDRs video_url may reach although private "
                                                    "(e.g. 10.0.0.0/8); loopback, private, link-local and "
                                                    "metadata addresses are refused otherwise")
    url_connect_timeout_s: float = Field(5.0, gt=0, description="video_url connect time limit")
    url_read_timeout_s: float = Field(30.0, gt=0, description="video_url time limit between received bytes")

    @field_validator("url_allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        # Checked at start-up: a bad CIDR stops the service with the variable's name, never
        # a request with a 500.
        from serving.fetch import FetchPolicy

        return ",".join(FetchPolicy.parse_networks(value))

    @field_validator("job_workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> object:
        # One message for both forms, rather than the integer branch's alone.
        if isinstance(value, str):
            value = value.strip().lower()
            if value != "auto" and not value.isdigit():
                raise ValueError("must be a whole number >= 0, or auto (one per core)")
        return value

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceConfig:
        """Build from ``VERACITY_*`` variables (unset ones keep their defaults).

        Raises:
            ValueError: a variable has an invalid value (the message names it).
        """
        env = os.environ if environ is None else environ
        values = {name: env[PREFIX + name.upper()] for name in cls.model_fields if PREFIX + name.upper() in env}
        values = {k: (None if v == "" and k in ("bundle", "challenger_bundle", "api_keys_file") else v)
                  for k, v in values.items()}
        try:
            cfg = cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            var = PREFIX + str(err["loc"][0]).upper() if err.get("loc") else "VERACITY_*"
            raise ValueError(f"{var}: {err['msg']}") from None
        root = cfg.project_root.resolve()
        # Relative locations are the project's, not the working directory's of whoever starts us.
        fix = {k: (root / getattr(cfg, k)) for k in ("cache_dir", "log_dir", "request_log_dir", "monitor_dir",
                                                     "artifact_dir", "job_dir")
               if not getattr(cfg, k).is_absolute()}
        return cfg.model_copy(update={"project_root": root, **fix})

    def api_key_list(self) -> list[str]:
        """The configured API keys (environment and file together).

        Raises:
            ValueError: the key file cannot be read, or a key is shorter than MIN_KEY_LEN.
        """
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            try:
                text = self.api_keys_file.read_text()
            except OSError as exc:
                raise ValueError(f"VERACITY_API_KEYS_FILE: cannot read {self.api_keys_file}: {exc.strerror}") from None
            keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        short = [k for k in keys if len(k) < MIN_KEY_LEN]
        if short:
            raise ValueError(f"VERACITY_API_KEYS: {len(short)} key(s) shorter than {MIN_KEY_LEN} characters; "
                             "use long random keys (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        return keys

    @property
    def local_job_workers(self) -> int:
        """The job worker processes the service starts: ``job_workers``, or for ``auto`` one per
        core (:func:`veracity.pool.auto_workers`)."""
        if self.job_workers == "auto":
            from veracity.pool import auto_workers

            return auto_workers()
        return self.job_workers

    @property
    def open_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.open_paths.split(",") if p.strip())


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: what README and ``--help`` show."""
    rows = []
    for name, f in ServiceConfig.model_fields.items():
        default = f.default
        shown = "" if default is None else (default.as_posix() if isinstance(default, Path) else str(default))
        rows.append((PREFIX + name.upper(), shown, f.description or ""))
    return rows
