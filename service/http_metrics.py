"""ASGI middleware that counts and times every HTTP request by route template."""

import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ServiceMetrics

UNKNOWN_HANDLER = "other"  # every path that is not a route: raw paths must never become label values


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, handlers: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.handlers = frozenset(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            path = scope["path"]
            self.metrics.record_request(
                path if path in self.handlers else UNKNOWN_HANDLER,
                scope["method"],
                status,
                time.perf_counter() - started,
            )
