"""Production serving: gunicorn managing uvicorn workers, with Prometheus multiprocess bookkeeping.

`PROMETHEUS_MULTIPROC_DIR` must be set before prometheus_client is first imported, because the library
picks its value storage at import time; `serve` sets it and only then imports the app.
"""

import os
import shutil
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from uvicorn_worker import UvicornWorker

from service.settings import Settings


class Worker(UvicornWorker):
    # The prediction log already records every prediction; a second access log line per request only
    # costs time.
    CONFIG_KWARGS = {"loop": "auto", "http": "auto", "access_log": False}


def reset_multiproc_dir(path: str) -> None:
    """Files left by an earlier run would be summed into this run's metrics: start empty."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def load_service_app(settings: Settings) -> Any:
    from service.app import create_app

    return create_app(settings)


class GunicornServer(BaseApplication):
    """`load_app` builds the ASGI app in each worker; the benchmark passes its bare app to measure the stack."""

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
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.load_app(self.settings)


def serve(settings: Settings, load_app: Callable[[Settings], Any] = load_service_app) -> None:
    multiproc_dir = str(settings.multiproc_dir.resolve())
    reset_multiproc_dir(multiproc_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    GunicornServer(settings, load_app).run()
