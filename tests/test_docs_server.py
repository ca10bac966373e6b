"""The runbook server: the repository's Markdown as HTML with GitHub's heading ids, nothing else served;
the same file runs on its own as docker compose's `docs` service, where prometheus.yml's runbook_page
points."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO_ROOT, poll

from stack.docs_server import RUNBOOK_PATH, DocsServer, github_anchor, render_markdown
from stack.processes import free_port


@pytest.fixture
def docs() -> Iterator[DocsServer]:
    server = DocsServer(REPO_ROOT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_headings_get_the_ids_github_gives_them() -> None:
    page = render_markdown("# Runbook\n\n## PredictionServiceDown\n\n### Why `for: 1m`?\n", "t")
    for heading in ('<h1 id="runbook">', '<h2 id="predictionservicedown">', '<h3 id="why-for-1m">'):
        assert heading in page
    assert github_anchor("Why `for: 1m`?") == "why-for-1m"


def test_raw_html_in_markdown_is_escaped() -> None:
    assert "<script>" not in render_markdown("<script>alert(1)</script>\n", "t")


def test_runbook_is_served_as_html_with_a_section_for_every_alert(docs: DocsServer) -> None:
    page = httpx.get(docs.url + RUNBOOK_PATH)
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    for rules_file in sorted((REPO_ROOT / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(rules_file.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert f'id="{rule["alert"].lower()}"' in page.text, rule["alert"]


def test_root_leads_to_the_runbook(docs: DocsServer) -> None:
    assert httpx.get(docs.url + "/", follow_redirects=True).url.path == RUNBOOK_PATH


@pytest.mark.parametrize(
    "path", ["/pyproject.toml", "/docs/../../etc/passwd", "/%2e%2e/etc/hostname", "/no.md"]
)
def test_only_markdown_files_inside_the_root_are_served(docs: DocsServer, path: str) -> None:
    assert httpx.get(docs.url + path).status_code == 404


def test_the_file_runs_on_its_own_as_in_the_docs_image(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "runbook.md").write_text("# Runbook\n\n## PredictionServiceDown\n")
    port = free_port()
    command = [sys.executable, "-I", str(REPO_ROOT / "stack" / "docs_server.py"), "--port", str(port)]
    process = subprocess.Popen([*command, "--root", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:

        def page() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}{RUNBOOK_PATH}")
            except httpx.TransportError:
                return None

        assert 'id="predictionservicedown"' in poll(page, 30, "the docs server", 0.1).text
    finally:
        process.terminate()
        process.wait(10)


def test_compose_serves_the_runbook_where_prometheus_links_it() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]["docs"]
    runbook_page = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())["global"][
        "external_labels"
    ]["runbook_page"]
    assert runbook_page == f"http://localhost:9098{RUNBOOK_PATH}"
    assert "127.0.0.1:9098:9098" in compose["ports"]
    assert "./docs:/srv/docs/docs:ro" in compose["volumes"]
