"""The repository's Markdown files as HTML pages on 127.0.0.1, so that an alert's runbook link opens offline.

`/docs/runbook.md#predictionservicedown` is docs/runbook.md rendered, each heading with the id GitHub gives
it: the same paths and anchors as on a Git host. Rendered on every request, so an edit shows at once.
`python -m stack run` serves it; `python -m stack.docs_server` serves it alone (docker compose does).
"""

from __future__ import annotations

import argparse
import html
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNBOOK_PATH = "/docs/runbook.md"
STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "pre,code{background:#f3f3f3}pre{padding:.6em;overflow-x:auto}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
)


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def render_markdown(text: str, title: str) -> str:
    """A whole HTML page; raw HTML in the Markdown is escaped, not passed through."""
    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = markdown.parse(text)
    for heading, inline in zip(tokens, tokens[1:], strict=False):
        if heading.type == "heading_open":
            heading.attrSet("id", github_anchor(inline.content))
    body = markdown.renderer.render(tokens, markdown.options, {})
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


class DocsServer:
    """Serves the `*.md` files under `root` as HTML (and nothing else) in a background thread."""

    def __init__(self, root: Path = REPO_ROOT) -> None:
        self.root = root.resolve()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = ThreadingHTTPServer((host, port), _make_handler(self.root))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="docs-server", daemon=True
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

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def markdown_file(root: Path, request_path: str) -> Path | None:
    """The Markdown file a request path names, if it is one under `root`."""
    path = (root / unquote(urlsplit(request_path).path).lstrip("/")).resolve()
    if path.suffix != ".md" or not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _make_handler(root: Path) -> type[BaseHTTPRequestHandler]:
    class DocsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if urlsplit(self.path).path == "/":
                self._answer(302, b"", "text/plain", location=RUNBOOK_PATH)
                return
            path = markdown_file(root, self.path)
            if path is None:
                self._answer(
                    404, b"not found: only the repository's Markdown files are served\n", "text/plain"
                )
                return
            page = render_markdown(path.read_text(), str(path.relative_to(root)))
            self._answer(200, page.encode(), "text/html; charset=utf-8")

        def _answer(self, status: int, body: bytes, content_type: str, location: str | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return DocsHandler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stack.docs_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9098, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
        help="folder whose .md files are served (default: the repository)",
    )
    args = parser.parse_args(argv)
    server = DocsServer(args.root)
    server.start(args.host, args.port)
    print(f"serving {server.root}/**/*.md on http://{args.host}:{server.port}{RUNBOOK_PATH}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
