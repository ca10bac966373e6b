"""A local stand-in for Slack's incoming webhooks, so Alertmanager's messages can be seen and tested.

It answers like Slack: 200 `ok` for a JSON object, 400 `invalid_payload` for anything else. It can be told to
answer 500 (Slack down) for the next N requests or until told otherwise. Every accepted message is kept as
`{"path": <request path>, "payload": <decoded JSON>}`.

Library: `receiver = SlackReceiver(); port = receiver.start("127.0.0.1")`, then
`receiver.wait_for(lambda message: ..., timeout=...)` and `receiver.stop()`.
Command: `python -m stack.slack_receiver --host 127.0.0.1 --port 9099` prints each message.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Message = dict[str, Any]

# Path of the webhook URL Slack hands out; the receiver accepts any path, this one just looks real.
WEBHOOK_PATH = "/services/T000/B000/XXX"


class SlackReceiver:
    def __init__(self, on_message: Callable[[Message], None] | None = None) -> None:
        self._on_message = on_message
        self._condition = threading.Condition()
        self._messages: list[Message] = []
        self._failures_left = 0
        self._failing = False
        self._server: ThreadingHTTPServer | None = None
        self._host = "127.0.0.1"
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve in a background thread; returns the bound port (an ephemeral one when `port` is 0)."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._host = host
        self._server.daemon_threads = True
        # A short poll interval keeps stop() quick; serve_forever checks for shutdown this often.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="slack-receiver", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> SlackReceiver:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """A Slack-looking webhook URL pointing at this receiver."""
        if self._server is None:
            raise RuntimeError("not started")
        return f"http://{self._host}:{self.port}{WEBHOOK_PATH}"

    # -- recorded messages -------------------------------------------------------------------------

    @property
    def messages(self) -> list[Message]:
        """A snapshot of the accepted messages, oldest first."""
        with self._condition:
            return list(self._messages)

    def clear(self) -> None:
        with self._condition:
            self._messages.clear()

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> Message:
        """The first accepted message matching `predicate`, waiting at most `timeout` seconds for it.

        Wakes up on every new message (no fixed sleep); raises TimeoutError listing what did arrive.
        """

        def first_match() -> Message | None:
            return next((message for message in self._messages if predicate(message)), None)

        with self._condition:
            match = self._condition.wait_for(first_match, timeout=timeout)
            if match is None:
                received = json.dumps(self._messages, indent=1)[:4000]
                raise TimeoutError(f"no matching Slack message within {timeout}s; received: {received}")
            return match

    # -- simulating Slack being down ---------------------------------------------------------------

    def fail_next(self, count: int) -> None:
        """Answer 500 to the next `count` requests, then recover."""
        with self._condition:
            self._failures_left = count

    @property
    def failing(self) -> bool:
        """While True, every request is answered 500 and nothing is recorded."""
        with self._condition:
            return self._failing

    @failing.setter
    def failing(self, value: bool) -> None:
        with self._condition:
            self._failing = value

    # -- called by the request handler -------------------------------------------------------------

    def _should_fail(self) -> bool:
        with self._condition:
            if self._failing:
                return True
            if self._failures_left > 0:
                self._failures_left -= 1
                return True
            return False

    def _record(self, path: str, payload: dict[str, Any]) -> None:
        message = {"path": path, "payload": payload}
        with self._condition:
            self._messages.append(message)
            self._condition.notify_all()
        if self._on_message is not None:
            self._on_message(message)


def _make_handler(receiver: SlackReceiver) -> type[BaseHTTPRequestHandler]:
    class SlackWebhookHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Alertmanager's HTTP client expects

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if receiver._should_fail():
                self._answer(500, "internal_error")
                return
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                self._answer(400, "invalid_payload")
                return
            receiver._record(self.path, payload)
            self._answer(200, "ok")

        def _answer(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the messages themselves are the interesting output

    return SlackWebhookHandler


def format_message(message: Message) -> str:
    """A Slack message as plain text: channel, then title and text of each attachment."""
    payload = message["payload"]
    lines = [f"--- {payload.get('channel', '(no channel)')} ({message['path']})"]
    if payload.get("text"):
        lines.append(payload["text"])
    for attachment in payload.get("attachments") or []:
        title = attachment.get("title", "")
        color = attachment.get("color")
        lines.append(f"{title} [{color}]" if color else title)
        lines.extend("  " + line for line in str(attachment.get("text", "")).splitlines())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stack.slack_receiver",
        description="Stand-in for a Slack incoming webhook: prints every message it receives.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9099, help="port to listen on (default: %(default)s)")
    args = parser.parse_args(argv)

    receiver = SlackReceiver(on_message=lambda message: print(format_message(message), flush=True))
    receiver.start(args.host, args.port)
    print(f"Slack stand-in listening on {receiver.url}", file=sys.stderr, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
