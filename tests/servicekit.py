"""The service launcher for tests: :class:`serving.process.ServiceProcess` under its test name."""

from __future__ import annotations

from serving.process import ServiceProcess as Server
from serving.process import free_port

__all__ = ["KEY", "LIMITS", "Server", "free_port"]

KEY = "vk-test-9f2c1e77d0b84a3c"  # the API key of the shared test server
# Small limits, so the tests can reach them with small files.
LIMITS = {"VERACITY_MAX_UPLOAD_MB": "1", "VERACITY_MAX_DURATION_S": "6", "VERACITY_MAX_FRAMES": "40"}
