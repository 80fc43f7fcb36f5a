"""The service launcher for tests: :class:`serving.process.ServiceProcess` under its test name."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from serving.process import ServiceProcess as Server
from serving.process import free_port

__all__ = ["KEY", "LIMITS", "Server", "clip_frames", "free_port", "origin"]

KEY = "vk-test-9f2c1e77d0b84a3c"  # the API key of the shared test server
# Small limits, so the tests can reach them with small files.
LIMITS = {"VERACITY_MAX_UPLOAD_MB": "1", "VERACITY_MAX_DURATION_S": "6", "VERACITY_MAX_FRAMES": "40"}


class _Origin(BaseHTTPRequestHandler):
    """``/clip`` (the body), ``/slow`` (the body trickled over ~3 s), anything else 404."""

    body = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path not in ("/clip", "/slow"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        step = len(self.body) if self.path == "/clip" else max(1, len(self.body) // 15)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a killed worker hangs up
            for i in range(0, len(self.body), step):
                self.wfile.write(self.body[i:i + step])
                self.wfile.flush()
                if self.path == "/slow":
                    time.sleep(0.2)


@contextlib.contextmanager
def origin(body: bytes) -> Iterator[str]:
    """A loopback HTTP server for ``video_url`` tests; yields its base URL."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Origin", (_Origin,), {"body": body}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def clip_frames(path: str | object, n: int = 12) -> list[bytes]:
    """The first ``n`` frames of a video as JPEG bytes (a meeting server's frame batch)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames: list[bytes] = []
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", f)[1].tobytes())
    cap.release()
    return frames
