"""The preview page in a real headless Chromium: the page loads, the MJPEG stream shows changing
frames, and the stats update. Served on 127.0.0.1 only; every wait is bounded."""

from __future__ import annotations

import json
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


def test_cameras_page_shows_a_live_image_per_camera_and_an_ended_one_as_ended(tmp_path):
    """``edge run --config --preview`` (the real CLI, the demo model): the page has a tile per camera,
    each tile's <img> plays that camera's stream at its size, the numbers update per camera, and
    the camera whose video ended says so while the others keep playing."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    from edge_process import EdgeRun, write_video

    write_video(tmp_path / "gate.avi", 40, (200, 150), fps=20)
    config = tmp_path / "cameras.json"
    config.write_text(json.dumps({"cameras": [
        {"name": "door", "source": "synthetic:320x240@15", "realtime": True},
        {"name": "yard", "source": "synthetic:160x120@15", "realtime": True},
        {"name": "gate", "source": str(tmp_path / "gate.avi"), "realtime": True}]}))
    sizes = {"door": (320, 240), "yard": (160, 120), "gate": (200, 150)}
    run = EdgeRun("--config", config, "--preview", "127.0.0.1:0", "--token", "s3cret", "--duration", "60",
                  "--stats-every", "0")
    try:
        port = run.port("preview")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, timeout=30_000)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 800})
                page.set_default_timeout(20_000)
                page.goto(f"http://127.0.0.1:{port}/?token=s3cret", wait_until="domcontentloaded")
                assert page.title() == "edgekit live preview: cameras"
                assert page.eval_on_selector_all("section.camera", "cells => cells.map(c => c.dataset.name)") == \
                    list(sizes)
                for name, (width, height) in sizes.items():
                    img = f"section.camera[data-name='{name}'] img"
                    page.wait_for_function(f"document.querySelector(\"{img}\").naturalWidth > 0")
                    assert page.eval_on_selector(img, "i => [i.naturalWidth, i.naturalHeight]") == [width, height]
                door = page.locator("section.camera[data-name='door'] img")
                first = door.screenshot()
                page.wait_for_timeout(1200)
                assert door.screenshot() != first, "door's stream did not change in 1.2 s"
                # gate's 2 s video ends: its tile says so, the header counts 2 of 3 up, door plays on.
                page.wait_for_function("document.querySelector(\"section.camera[data-name='gate'] .state\")"
                                       ".textContent === 'ended'")
                assert "down" in page.get_attribute("section.camera[data-name='gate']", "class")
                page.wait_for_function("document.getElementById('cameras_up').textContent === '2/3'")
                key = "section.camera[data-name='{}'] b[data-key='frames_processed']"
                seen = int(page.inner_text(key.format("yard")))
                page.wait_for_function(f"Number(document.querySelector(\"{key.format('yard')}\").textContent) > {seen}")
                assert page.inner_text("section.camera[data-name='door'] .state") == "up"
                after_end = door.screenshot()
                page.wait_for_timeout(1200)
                assert door.screenshot() != after_end, "door stopped beside the ended camera"
                assert page.inner_text("#state") == "running"
            finally:
                browser.close()
    finally:
        code = run.stop()
    assert code == 0, run.stderr
    assert run.summary()["gate"]["state"] == "ended"


def test_cameras_page_beyond_its_stream_count_refreshes_snapshots():
    """More cameras than the page streams (a browser opens 6 connections to a server at most): each
    tile shows its camera's snapshot, refreshed once a second, and the stats still come through."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    from edge.live.preview_cameras import CamerasPreviewServer
    from test_preview_cameras import Feeders, _Named

    sizes = [(96, 64), (128, 96), (160, 120)]
    names = [f"cam{i}" for i in range(3)]
    server = CamerasPreviewServer("127.0.0.1", 0, names, page_streams=2, snapshot_interval=0.1).start()
    try:
        with Feeders(server.attach([_Named(n) for n in names]), sizes), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS, timeout=30_000)
            try:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                page.goto(server.url, wait_until="domcontentloaded")
                for name, (width, height) in zip(names, sizes):
                    img = f"section.camera[data-name='{name}'] img"
                    page.wait_for_function(f"document.querySelector(\"{img}\").naturalWidth > 0")
                    assert page.eval_on_selector(img, "i => [i.naturalWidth, i.naturalHeight]") == [width, height]
                    assert "/snapshot.jpg?n=" in page.get_attribute(img, "src")
                page.wait_for_function("document.querySelector(\"section.camera[data-name='cam0'] img\")"
                                       ".src.includes('n=3')")
                page.wait_for_function("Number(document.getElementById('updates').textContent) >= 2")
            finally:
                browser.close()
        assert server.stats()["viewers"] == 0, "no stream was opened"
    finally:
        server.close()
