"""`curate browse` on the example pipeline's run (tests/audit_fixtures.py): a real `curate browse`
process driven by headless Chromium (Debian's /usr/bin/chromium through Playwright), and the
security properties over raw HTTP: path traversal, symlinks out of the run, token off loopback,
no write endpoints, escaped text."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from tests.fixtures.audit_run import INSTRUCTION, XSS
from tests.fixtures.media import REPO

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts"
# The flags this machine's closed network needs (no background fetches, no QUIC), as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def browse_server(run_dir: Path, *args: str) -> Iterator[tuple[int, str]]:
    """`curate browse` as a user starts it; yields (port, what it printed at start)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "curation.cli", "browse", str(run_dir), "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})
    try:
        while True:  # until it listens (pytest-timeout bounds the wait)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        os.set_blocking(proc.stdout.fileno(), False)
        yield port, proc.stdout.read() or ""
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def raw_get(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, bytes, dict]:
    """A request with the path sent exactly as given (no client-side `..` normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    conn.endheaders()
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body, {k.lower(): v for k, v in response.getheaders()}


def manifest_count(run_dir: Path, stage: str, where: str) -> int:
    return duckdb.sql(f"SELECT count(*) FROM read_parquet('{run_dir / stage}/part-*.parquet') WHERE {where}").fetchall()[0][0]


@pytest.fixture(scope="module")
def server(audit_run):
    with browse_server(audit_run) as (port, printed):
        yield port, printed


def test_browser_filters_by_reason_opens_a_sample_sees_masks_and_follows_lineage(audit_run, server):
    if os.environ.get("CURATE_SKIP_BROWSER") == "1":
        pytest.skip("CURATE_SKIP_BROWSER=1")
    assert CHROMIUM.exists(), "Debian's chromium is missing: scripts/test.sh installs it (or set CURATE_SKIP_BROWSER=1)"
    from playwright.sync_api import sync_playwright

    port, printed = server
    assert f"http://localhost:{port}/" in printed
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"http://127.0.0.1:{port}/")
        # The funnel: the drop reason near_duplicate at dedup opens the samples dropped for it.
        page.click("#funnel a.reason.dropped:has-text('near_duplicate')")
        page.wait_for_selector("#samples")
        dropped = manifest_count(audit_run, "08-dedup", "status = 'dropped' AND reason LIKE 'near_duplicate%'")
        assert dropped >= 1 and page.inner_text("#count").startswith(f"{dropped} row")
        statuses = page.locator("#samples tbody tr td:nth-child(4)").all_inner_texts()
        assert statuses == ["dropped"] * dropped
        page.locator("#samples a.sample-link").first.click()
        page.wait_for_selector("#sample-id")
        assert "near_duplicate" in page.inner_text("#reason")
        # Its RoE mask overlays are shown (loaded images, not broken ones) and its instruction, literally.
        overlays = page.locator("img.overlay")
        assert overlays.count() >= 2
        overlays.first.scroll_into_view_if_needed()
        page.wait_for_function("() => [...document.querySelectorAll('img.overlay')].every(i => i.complete)")
        widths = page.eval_on_selector_all("img.overlay", "imgs => imgs.map(i => i.naturalWidth)")
        assert min(widths) > 100
        instructions = page.locator(".instruction").all_inner_texts()
        assert INSTRUCTION in instructions
        # XSS in the VLM's text stays text: no dialog fired, no element came of it.
        assert page.locator("img[src='x']").count() == 0
        assert page.evaluate("() => document.querySelectorAll('script').length") == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browse-sample.png"), full_page=True)
        # Lineage: session -> clip -> video -> source, each one click from here; go to the source file.
        kinds = page.locator("a.lineage-link").all_inner_texts()
        assert [k.split()[0] for k in kinds] == ["clip", "video", "source"]
        page.click("a.lineage-link.kind-source")
        page.wait_for_selector("#sample-id")
        assert page.inner_text("h1").startswith("source")
        source_uri = page.inner_text("#source-uri")
        assert source_uri.startswith(str(REPO / "examples" / "media")) and Path(source_uri).is_file()
        page.screenshot(path=str(ARTIFACTS / "browse-source.png"), full_page=True)
        browser.close()
    assert dialogs == []


def test_instruction_text_is_escaped_in_the_html(audit_run, server):
    port, _ = server
    status, body, headers = raw_get(port, "/samples?stage=06-ground&q=white+car")
    html = body.decode()
    assert status == 200 and "onerror" in html
    assert XSS not in html and "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "script-src" not in headers["content-security-policy"] and "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_table_counts_and_filters_match_the_manifests(audit_run, server):
    port, _ = server
    cases = {
        "/samples?stage=03-filter_quality&status=dropped&reason=text_overlay":
            manifest_count(audit_run, "03-filter_quality", "status = 'dropped' AND split_part(reason, ':', 1) = 'text_overlay'"),
        "/samples?stage=03-filter_quality&score=luma&min=100&max=160":
            manifest_count(audit_run, "03-filter_quality", "scores['luma'] BETWEEN 100 AND 160"),
        "/samples?stage=02-scene_split&kind=clip": manifest_count(audit_run, "02-scene_split", "kind = 'clip'"),
        "/samples?q=RED+JACKET&stage=05-annotate": manifest_count(audit_run, "05-annotate", "status = 'ok'"),
        "/samples?q=%25": 0,  # a literal %, not a wildcard
        "/samples?q=%27%3B+DROP+TABLE+light%3B--": 0,
    }
    for path, expected in cases.items():
        status, body, _ = raw_get(port, path)
        assert status == 200, path
        shown = int(re.search(r'<p id="count">(\d+) row', body.decode()).group(1))
        assert shown == expected, path
    assert 0 < cases["/samples?stage=03-filter_quality&score=luma&min=100&max=160"] < 11


def test_path_traversal_absolute_paths_and_outward_symlinks_are_404(audit_run, server):
    port, _ = server
    # Control: a file of the run is served.
    status, body, _ = raw_get(port, "/files/05-annotate/_run.json")
    assert status == 200 and b'"stage": "annotate"' in body
    (audit_run / "etc-link").symlink_to("/etc")
    (audit_run / "passwd-link").symlink_to("/etc/passwd")
    (audit_run / "run-link.json").symlink_to(audit_run / "05-annotate" / "_run.json")
    try:
        assert raw_get(port, "/files/run-link.json")[0] == 200  # a symlink that stays inside is fine
        for path in ["/files/../../etc/passwd", "/files/..%2f..%2fetc%2fpasswd", "/files/%2e%2e/%2e%2e/etc/passwd",
                     "/files/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/files//etc/passwd",
                     "/files/%2Fetc%2Fpasswd", "/files/etc-link/passwd", "/files/passwd-link", "/files/05-annotate/../../x",
                     "/files/05-annotate%5c..%5c..%5cetc%5cpasswd", "/files/%00", "/../../etc/passwd",
                     "/media/..%2f..%2f..%2fetc/x/passwd.jpg", "/shard/..%2f..%2fetc%2fpasswd/member-x.jpg"]:
            status, body, _ = raw_get(port, path)
            assert status == 404, path
            assert b"root:" not in body, path
    finally:
        for name in ("etc-link", "passwd-link", "run-link.json"):
            (audit_run / name).unlink()


def test_no_write_endpoints(audit_run, server):
    from curation.audit.app import build_app

    port, _ = server
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/samples", "/files/05-annotate/_run.json"):
            assert raw_get(port, path, method=method)[0] == 405, (method, path)
    routes = build_app(str(audit_run)).routes
    assert routes and all(set(r.methods) <= {"GET", "HEAD"} for r in routes)


def test_off_loopback_a_token_is_required_and_printed(audit_run):
    with browse_server(audit_run, "--host", "0.0.0.0") as (port, printed):
        token = re.search(r"\?token=([\w-]+)", printed).group(1)
        assert "warning" in printed and "0.0.0.0" in printed
        assert raw_get(port, "/")[0] == 401
        assert raw_get(port, "/?token=wrong")[0] == 401
        assert raw_get(port, "/files/05-annotate/_run.json")[0] == 401
        status, _, headers = raw_get(port, f"/?token={token}")
        assert status == 200 and "httponly" in headers["set-cookie"].lower()
        cookie = headers["set-cookie"].split(";")[0]
        assert raw_get(port, "/samples", headers={"Cookie": cookie})[0] == 200
        assert raw_get(port, "/samples", headers={"Authorization": f"Bearer {token}"})[0] == 200


def test_shard_view_shows_members_and_the_trainers_examples(audit_run, server):
    port, _ = server
    index = duckdb.sql(f"SELECT sample_id, shard FROM read_parquet('{audit_run}/shards/index.parquet')").fetchall()
    sample_id, shard = index[0]
    status, body, _ = raw_get(port, f"/sample/{sample_id}")
    assert status == 200 and f'href="/shard/{sample_id}"'.encode() in body
    status, body, _ = raw_get(port, f"/shard/{sample_id}")
    html = body.decode()
    assert status == 200 and shard in html and "turns.json" in html and "frame_0.jpg" in html
    examples = re.findall(rf'src="(/shard/{sample_id}/example-\d+\.jpg)"', html)
    assert examples  # one per session sequence (a run of annotated turns)
    assert "a session sequence of" in html and "target(s)" in html
    for path in examples + re.findall(rf'src="(/shard/{sample_id}/member-[^"]+\.jpg)"', html)[:2]:
        status, data, headers = raw_get(port, path)
        assert status == 200 and headers["content-type"] == "image/jpeg" and data[:2] == b"\xff\xd8"
    assert raw_get(port, f"/shard/{sample_id}/example-99.jpg")[0] == 404
    assert raw_get(port, "/shard/nope")[0] == 404
    assert raw_get(port, "/sample/nope")[0] == 404
