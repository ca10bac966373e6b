"""The framework ceiling: an ASGI app with no model, no validation and no metrics.

Served by the same `GunicornServer` and uvicorn worker settings as the service, it reads the request body
and answers a fixed JSON body the size of a /predict answer, so the benchmark can tell how much of the
time per request is the server stack and how much is ours.
"""

from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.settings import Settings

# The size and shape of a /predict answer.
BODY = (
    b'{"job_id":"00000000-0000-4000-8000-000000000000","prediction":[0.9802872538566589,'
    b'0.01971195638179779,7.484755997211323e-7],"is_outlier":false,"outlier_score":0.1915884017944336}'
)
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", str(len(BODY)).encode()), (b"content-type", b"application/json")],
}
RESPONSE_BODY: Message = {"type": "http.response.body", "body": BODY}


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:  # read the whole request body, as /predict does
        message = await receive()
        more_body = message.get("more_body", False)
    await send(START)
    await send(RESPONSE_BODY)


def load_bare_app(settings: Settings) -> Any:
    return bare_app


def main() -> None:
    from service.server import serve

    serve(Settings(), load_bare_app)


if __name__ == "__main__":
    main()
