"""The metrics endpoint: Prometheus text at ``GET /metrics`` (Triton's port 8002).

A small ASGI app on its own socket, on the server's event loop.
The page is rendered in a worker thread (``naiad.observability.metrics``):
a scrape reads every model's counters and may poll NVML, which should not
hold up the loop that serves inference.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from naiad.frontends.asgi_server import answer_lifespan
from naiad.frontends.http import HttpFrontend
from naiad.observability.metrics import CONTENT_TYPE

log = logging.getLogger("naiad.metrics")
_CONTENT_TYPE = CONTENT_TYPE.encode()


class MetricsApp:
    def __init__(self, server: Any):
        self.server = server

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            await answer_lifespan(scope, receive, send)
            return
        path = scope["path"]
        if path != "/metrics":
            await self._send(send, 404, b"Not Found", b"text/plain")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await self._send(send, 405, b"Method Not Allowed", b"text/plain")
            return
        metrics = self.server.metrics
        if metrics is None:
            await self._send(send, 503, b"metrics are disabled", b"text/plain")
            return
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, metrics.render)
        except Exception:
            log.exception("rendering metrics failed")
            await self._send(send, 500, b"rendering metrics failed", b"text/plain")
            return
        if scope["method"] == "HEAD":
            body = b""
        await self._send(send, 200, body, _CONTENT_TYPE)

    @staticmethod
    async def _send(send, status: int, body: bytes, content_type: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class MetricsFrontend:
    """Serves ``/metrics``; started by ``Server.start_frontends`` when metrics are allowed.

    The same HTTP server as the inference endpoint (``HttpFrontend``), with the
    metrics app instead of the inference one.
    """

    name = "Metrics Service"

    def __init__(self, server: Any, address: str, port: int):
        self.server = server
        self.address = address
        self.port = port
        self._http = HttpFrontend(server, address, port, max_input_size=64 * 1024,
                                  app=MetricsApp(server))

    async def start(self) -> None:
        if self.server.metrics is not None:
            self.server.metrics.start()
        await self._http.start()
        self.port = self._http.port

    async def stop(self) -> None:
        try:
            await self._http.stop()
        except Exception:
            log.exception("metrics endpoint shutdown failed")
