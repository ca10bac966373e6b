"""Production serving: gunicorn managing uvicorn workers, with Prometheus multiprocess bookkeeping.

`PROMETHEUS_MULTIPROC_DIR` must be set before prometheus_client is first imported, because the library
picks its value storage at import time; `serve` sets it and only then imports the app.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from service.http_protocol import CoalescingHttpToolsProtocol
from service.settings import Settings


class Worker(UvicornWorker):
    # The prediction log already records every prediction; a second access log line per request only
    # costs time. The http protocol is uvicorn's httptools one, writing each response in one go.
    CONFIG_KWARGS = {"loop": "auto", "http": CoalescingHttpToolsProtocol, "access_log": False}


def reset_multiproc_dir(path: str) -> None:
    """Files left by an earlier run would be summed into this run's metrics: start empty."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    from service.multiproc_compaction import fold_dead_worker

    multiprocess.mark_process_dead(worker.pid)
    fold_dead_worker(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), worker.pid)


def load_service_app(settings: Settings) -> Any:
    from service.app import create_app

    return create_app(settings)


def _serve_metrics_port(host: str, port: int) -> Callable[[Any], None]:
    """gunicorn `when_ready` hook: the master serves /metrics on its own port, apart from the API."""

    def when_ready(server: Any) -> None:
        from prometheus_client import start_http_server

        from service.multiproc_compaction import multiprocess_registry

        registry = multiprocess_registry(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        start_http_server(port, addr=host, registry=registry)
        server.log.info("metrics on http://%s:%s/metrics", host, port)

    return when_ready


class GunicornServer(BaseApplication):
    """`load_app` builds the ASGI app in each worker; the benchmark passes a bare app to measure the stack."""

    def __init__(self, settings: Settings, load_app: Callable[[Settings], Any] = load_service_app) -> None:
        self.settings = settings
        self.load_app = load_app
        super().__init__()

    def load_config(self) -> None:
        settings = self.settings
        options = {
            "bind": f"{settings.host}:{settings.port}",
            "workers": settings.workers,
            "worker_class": f"{Worker.__module__}.{Worker.__qualname__}",
            "max_requests": settings.max_requests,
            "max_requests_jitter": settings.max_requests // 10,
            "child_exit": _child_exit,
            "graceful_timeout": 10,
            "keepalive": 5,
            # gunicorn 22+ opens a control socket in $HOME by default; two instances would collide
            "control_socket_disable": True,
        }
        if settings.metrics_port is not None:
            options["when_ready"] = _serve_metrics_port(settings.host, settings.metrics_port)
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.load_app(self.settings)


def serve(settings: Settings, load_app: Callable[[Settings], Any] = load_service_app) -> None:
    multiproc_dir = str(settings.multiproc_dir.resolve())
    reset_multiproc_dir(multiproc_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    GunicornServer(settings, load_app).run()
