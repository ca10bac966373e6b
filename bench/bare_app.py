"""The framework ceilings: ASGI apps with no validation, no metrics and no log.

Served by the same `GunicornServer` and uvicorn worker settings as the service, each reads the request
body and answers a fixed JSON body the size of a /predict answer. `bare_app` does nothing else: how much of
the time per request is the server stack. The model app also runs the two raw onnxruntime sessions on a
fixed row (`raw_model_runs`, which `bench.inprocess` times too): the stack plus the model, the most
/predict could reach.

`python -m bench.bare_app` serves the bare app, `python -m bench.bare_app model` the model app (settings
from the same `SERVICE_` environment variables as the service).
"""

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.model import inference_session
from service.model_files import CLASSIFIER_FILE, INPUT_NAME, OUTLIER_DETECTOR_FILE
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
SAMPLE_ROW = [5.1, 3.5, 1.4, 0.2]  # the book's sample input


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def answering_app(work: Callable[[], object] | None = None) -> ASGIApp:
    """An app that reads the request body, calls `work` (if any) and sends the fixed answer."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        if scope["type"] != "http":
            return
        more_body = True
        while more_body:  # read the whole request body, as /predict does
            message = await receive()
            more_body = message.get("more_body", False)
        if work is not None:
            work()
        await send(START)
        await send(RESPONSE_BODY)

    return app


bare_app = answering_app()


def raw_model_runs(model_dir: Path) -> Callable[[], None]:
    """The two raw `InferenceSession.run` calls on a fixed row, with the service's session options."""
    classifier = inference_session(model_dir / CLASSIFIER_FILE)
    detector = inference_session(model_dir / OUTLIER_DETECTOR_FILE)
    feed = {INPUT_NAME: np.array([SAMPLE_ROW], dtype=np.float32)}

    def run_both_models() -> None:
        classifier.run(["probabilities"], feed)
        detector.run(["scores"], feed)

    return run_both_models


def model_app(settings: Settings) -> ASGIApp:
    return answering_app(raw_model_runs(settings.model_dir))


def load_bare_app(settings: Settings) -> ASGIApp:
    return bare_app


def main(argv: list[str] | None = None) -> None:
    from service.server import serve

    parser = argparse.ArgumentParser(prog="python -m bench.bare_app", description=__doc__)
    parser.add_argument(
        "app", nargs="?", choices=["bare", "model"], default="bare", help="which app to serve (default: bare)"
    )
    args = parser.parse_args(argv)
    serve(Settings(), model_app if args.app == "model" else load_bare_app)


if __name__ == "__main__":
    main()
