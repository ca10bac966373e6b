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


# The hooks import prometheus_client and the metric modules only when they run, in the master or a worker,
# after `serve` has set PROMETHEUS_MULTIPROC_DIR.


def _pre_fork(server: Any, worker: Any) -> None:
    from service.worker_metrics import assign_slot

    assign_slot(server, worker)


def _post_fork(server: Any, worker: Any) -> None:
    from service.worker_metrics import record_slot

    record_slot(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), worker.slot, worker.pid)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    from service.multiproc_compaction import fold_dead_worker
    from service.worker_metrics import record_exit

    multiprocess.mark_process_dead(worker.pid)
    fold_dead_worker(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), worker.pid)
    record_exit(worker)


def load_service_app(settings: Settings) -> Any:
    from service.app import create_app

    return create_app(settings)


def _when_ready(settings: Settings) -> Callable[[Any], None]:
    """gunicorn `when_ready` hook: the master records the capacity and, with SERVICE_METRICS_PORT, serves
    /metrics on its own port, apart from the API."""

    def when_ready(server: Any) -> None:
        from prometheus_client import start_http_server

        from service.multiproc_compaction import multiprocess_registry
        from service.worker_metrics import service_workers

        service_workers.set(settings.workers)
        if settings.metrics_port is None:
            return
        registry = multiprocess_registry(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]), os.getpid())
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
        server.log.info("metrics on http://%s:%s/metrics", settings.host, settings.metrics_port)

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
            "pre_fork": _pre_fork,
            "post_fork": _post_fork,
            "child_exit": _child_exit,
            "when_ready": _when_ready(settings),
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
