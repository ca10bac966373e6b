"""The POST prediction endpoints as plain ASGI: read the body, hand it to the Predictor, send its answer.

They are the hot path, so they skip FastAPI's routing, dependency solving, Request objects and middleware
stack, which cost several times the prediction itself. FastAPI still declares them (OpenAPI schema, 405
for other methods); `service.app` sends every POST to these paths here first. What a client sees is what
the FastAPI stack would answer: the same bodies, status codes, headers, metrics and log lines, and on an
unexpected error the same plain 500 as Starlette's ServerErrorMiddleware, re-raised for the server to log.
"""

import time
from collections.abc import Callable

import orjson
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from service.metrics import ServiceMetrics
from service.predictor import PROBE_HEADER, Answer, Outcome, Predictor, job_id_for
from service.validation import InvalidInput, Reason

JSON_CONTENT_TYPE = (b"content-type", b"application/json")


def too_large(max_bytes: int, declared: str | None) -> InvalidInput:
    if declared is not None:
        return InvalidInput(Reason.BODY_TOO_LARGE, f"body has {declared} bytes; the limit is {max_bytes}")
    return InvalidInput(Reason.BODY_TOO_LARGE, f"body is larger than the limit of {max_bytes} bytes")


async def read_body(receive: Receive, declared_length: str | None, max_bytes: int) -> bytes:
    """The whole request body, refused as soon as it is known to be larger than `max_bytes`."""
    if declared_length is not None and declared_length.isdigit() and int(declared_length) > max_bytes:
        raise too_large(max_bytes, declared_length)
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes, None)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def response_start(outcome: Outcome, body: bytes) -> Message:
    # the headers in the order Starlette's Response(headers={"X-Request-ID": ...}) sends them
    return {
        "type": "http.response.start",
        "status": outcome.status_code,
        "headers": [
            (b"x-request-id", outcome.job_id.encode("latin-1")),
            (b"content-length", str(len(body)).encode("latin-1")),
            JSON_CONTENT_TYPE,
        ],
    }


class PredictionRoute:
    """One POST prediction endpoint; also counts and times the request as HttpMetricsMiddleware does."""

    def __init__(
        self,
        path: str,
        answer: Answer,
        predictor: Callable[[], Predictor],
        max_body_bytes: int,
        metrics: ServiceMetrics | None,
    ) -> None:
        self.path = path
        self._answer = answer
        self._predictor = predictor  # raises KeyError before the app's startup, like the FastAPI route
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the metrics count if anything raises before the response starts
        response_started = False
        try:
            predictor = self._predictor()
            request_id = content_type = declared_length = None
            probe = False
            for name, value in scope["headers"]:  # the first of each, as Starlette's Headers.get
                if name == b"content-type":
                    if content_type is None:
                        content_type = value.decode("latin-1")
                elif name == b"content-length":
                    if declared_length is None:
                        declared_length = value.decode("latin-1")
                elif name == b"x-request-id" and request_id is None:
                    request_id = value.decode("latin-1")
                elif name == PROBE_HEADER:
                    probe = True
            job_id = job_id_for(request_id)
            try:
                body = await read_body(receive, declared_length, self._max_body_bytes)
            except InvalidInput as error:
                outcome = predictor.reject(self.path, error, b"", job_id, started)
            else:
                outcome = predictor.handle_body(
                    self.path, self._answer, body, content_type, job_id, started, probe
                )
            encoded = orjson.dumps(outcome.body)
            status = outcome.status_code
            response_started = True
            await send(response_start(outcome, encoded))
            await send({"type": "http.response.body", "body": encoded})
        except Exception:
            if self._metrics is not None:
                self._metrics.record_request(self.path, "POST", status, time.perf_counter() - started)
            if not response_started:
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise
        if self._metrics is not None:
            self._metrics.record_request(self.path, "POST", status, time.perf_counter() - started)
