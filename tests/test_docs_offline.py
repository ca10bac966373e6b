"""/docs and /redoc work without the internet: every file they load is served by the service itself, and
Swagger UI renders every operation in headless Chromium with every host name but 127.0.0.1 unresolvable."""

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stack.processes import free_port
from stack.service_process import ServiceProcess, service_env, start_service

pytestmark = pytest.mark.serving

DOC_PAGES = ["/docs", "/redoc"]
# src="...", href="...", url: '...' (Swagger UI's spec URL) in the HTML FastAPI writes
ASSET_REFERENCE = re.compile(r"""(?:src|href|url)\s*[=:]\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[ServiceProcess]:
    run_dir = tmp_path_factory.mktemp("docs-service")
    running = start_service(
        service_env(model_dir, run_dir, free_port(), workers="1", prediction_log_enabled="false"),
        run_dir / "service.log",
    )
    try:
        running.wait_for_workers(1, timeout=60)
        yield running
    finally:
        running.stop()


def references(html: str) -> list[str]:
    return ASSET_REFERENCE.findall(html)


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_page_loads_only_files_the_service_serves(service: ServiceProcess, page: str) -> None:
    response = httpx.get(service.url + page)
    assert response.status_code == 200
    assets = references(response.text)
    assert len(assets) >= 3, assets  # the script, the favicon, the OpenAPI document (and Swagger's CSS)
    assert [asset for asset in assets if not asset.startswith("/")] == []
    statuses = {asset: httpx.get(service.url + asset).status_code for asset in assets}
    assert statuses == dict.fromkeys(assets, 200)


def test_swagger_ui_renders_every_operation_with_no_network(service: ServiceProcess) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not on PATH: install Debian's `chromium` package")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # as root, as in CI
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",  # let the scripts run until the page is idle
            "--dump-dom",
            service.url + "/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rendered_paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', result.stdout))
    schema_paths = set(httpx.get(service.url + "/openapi.json").json()["paths"])
    assert rendered_paths == schema_paths, result.stderr[-2000:]
