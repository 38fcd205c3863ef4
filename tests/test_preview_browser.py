"""The preview page in a real headless Chromium: the page loads, the MJPEG stream shows changing
frames, and the stats update. Served on 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import os
import shutil
import threading
import urllib.request

import pytest

from edge.detector.detector import Detector
from edge.live.loop import LiveLoop
from edge.live.preview import PreviewServer, PreviewSink
from edge.live.sources import open_source

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_browser():
    reason = None
    if CHROMIUM is None:
        reason = "chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is not installed (pip install playwright; never playwright install)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must have it")
        pytest.skip(reason)


@pytest.fixture
def live_preview(ssd_model_path, coco_labels_path):
    detector = Detector(ssd_model_path, labels=coco_labels_path, num_threads=1)
    source = open_source("synthetic:320x240@15", realtime=True)
    server = PreviewServer("127.0.0.1", 0, token="s3cret")
    loop = LiveLoop(detector, source, [PreviewSink(server)], duration=60, stats_every=0)
    server.set_stats(loop.live_stats)
    server.start()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", loop.run()), daemon=True)
    thread.start()
    yield server, loop
    loop.stop("test over")
    thread.join(10)
    assert not thread.is_alive()


def test_token_is_required(live_preview):
    server, _ = live_preview
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats.json", timeout=5)
    assert info.value.code == 403
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/stats.json?token=s3cret", timeout=5) as response:
        assert b"frames_processed" in response.read()


def test_page_streams_frames_and_stats_update(live_preview, tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    server, loop = live_preview
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 800, "height": 600})
            page.set_default_timeout(20_000)
            page.goto(server.url, wait_until="domcontentloaded")
            assert page.title() == "edgekit live preview"
            # The <img> decodes MJPEG parts as they arrive: a real frame has the stream's size.
            page.wait_for_function("document.getElementById('stream').naturalWidth > 0")
            assert page.evaluate("document.getElementById('stream').naturalWidth") == 320
            assert page.evaluate("document.getElementById('stream').naturalHeight") == 240
            image = page.locator("#stream")
            first = image.screenshot()
            page.wait_for_timeout(1500)
            second = image.screenshot()
            assert first != second, "the stream did not change between two screenshots 1.5 s apart"
            # Stats: the page polls stats.json every second; the numbers must move.
            page.wait_for_function("Number(document.getElementById('updates').textContent) >= 2")
            processed_1 = int(page.inner_text("#processed"))
            page.wait_for_function(f"Number(document.getElementById('processed').textContent) > {processed_1}")
            assert page.inner_text("#state") == "running"
            assert float(page.inner_text("#rss")) > 10
            assert float(page.inner_text("#invoke_p50")) > 0
        finally:
            browser.close()
    assert server.exchange.encoded >= 2
    assert loop.processed > processed_1
