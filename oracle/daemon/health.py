"""The daemon's HTTP endpoint: ``/health`` (ok / degraded / down, as JSON) and ``/metrics`` (Prometheus) on one port.

``/health`` answers 200 for ok and degraded (the daemon works, something needs a look: e.g. the node is away and
settlement waits) and 503 for down (events are not being taken in), so a load balancer or a supervisor's
probe can use the status code alone. Each check is a function returning ``(state, detail)``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from iotsettle.oracle.daemon.metrics import CONTENT_TYPE, Metrics
from iotsettle.oracle.protocol.errors import ConfigError

log = logging.getLogger(__name__)


class State(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"


_RANK = {State.OK: 0, State.DEGRADED: 1, State.DOWN: 2}
Check = Callable[[], tuple[State, str]]


def overall(results: dict[str, tuple[State, str]]) -> State:
    """The worst state of all checks (ok when there are none)."""
    return max((state for state, _ in results.values()), key=_RANK.__getitem__, default=State.OK)


class Health:
    """Named checks plus the HTTP server that reports them."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._checks: dict[str, Check] = {}
        self._refresh: list[Callable[[], None]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Run ``refresh`` before each /metrics answer (gauges read from the store, e.g. the backlog)."""
        self._refresh.append(refresh)

    def report(self) -> dict[str, Any]:
        results: dict[str, tuple[State, str]] = {}
        for name, check in self._checks.items():
            try:
                results[name] = check()
            except Exception as exc:
                results[name] = (State.DOWN, f"check failed: {exc}")
        return {
            "status": str(overall(results)),
            "checks": {name: {"status": str(state), "detail": detail} for name, (state, detail) in results.items()},
        }

    def render_metrics(self) -> bytes:
        for refresh in self._refresh:
            try:
                refresh()
            except Exception:
                log.exception("refreshing metrics failed")
        for name, check in self.report()["checks"].items():
            self.metrics.check_state.labels(check=name).set(_RANK[State(check["status"])])
        return self.metrics.render()

    def start(self) -> None:
        """Serve on ``host:port`` (port 0 picks a free one; ``self.port`` tells which)."""
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/health", "/healthz", "/"):
                    report = health.report()
                    body = json.dumps(report).encode()
                    code = 503 if report["status"] == State.DOWN else 200
                    self._answer(code, "application/json", body)
                elif path == "/metrics":
                    self._answer(200, CONTENT_TYPE, health.render_metrics())
                else:
                    self._answer(404, "text/plain", b"not found: try /health or /metrics\n")

            def _answer(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"[oracle] health_port {self.port}: cannot listen on {self.host}: {exc.strerror}"
            ) from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self._thread.start()
        log.info("health and metrics on http://%s:%d/health and /metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
