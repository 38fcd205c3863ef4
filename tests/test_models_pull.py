"""``edge models pull``: against a real HTTP server on 127.0.0.1 that these tests start, serving
archives these tests build (a zip holding a copy of the bundled demo .tflite and a labels file),
pinned through a test catalogue entry. No test touches the internet or ~/.cache."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import re
import socket
import struct
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import edge.cli
from edge import catalog, download, http_fetch, model_cache
from edge.catalog import TFLITE, ZIP, CatalogEntry
from edge.download import resolve_model
from edge.errors import EdgeError
from edge.model_cache import labels_beside
from edge.models import DEMO_MODEL

NAME = "test-ssd"
LABELMAP = "???\nperson\nbicycle\n???\ncar\n"  # the layout of Google's labelmap.txt
STORED_LABELS = "person\nbicycle\nn/a\ncar\n"  # ... as edge reads labels: line i is class i


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class Behaviour:
    """What the server does; the tests change it before a pull."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges = True  # honour Range requests
        self.cut_at: int | None = None  # bytes of body sent before hanging up ...
        self.cuts = 0  # ... on this many responses
        self.stall = 0.0  # seconds to go quiet after the cut, before hanging up
        self.status: int | None = None  # answer every request with this status
        self.midway: threading.Event | None = None  # set once the cut is sent; then wait for `gone`
        self.gone: threading.Event | None = None
        self.requests: list[tuple[str, str | None]] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        b: Behaviour = self.server.behaviour
        b.requests.append((self.path, self.headers.get("Range")))
        if b.status:
            self.send_error(b.status)
            return
        data = b.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if b.ranges and requested:
            start = int(requested.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes" if b.ranges else "none")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", f'"{sha256(data)[:16]}"')
        self.end_headers()
        body = data[start:]
        if b.cuts > 0 and b.cut_at is not None:
            b.cuts -= 1
            self.wfile.write(body[: b.cut_at])
            self.wfile.flush()
            if b.midway is not None:
                b.midway.set()
                b.gone.wait(10)
            time.sleep(b.stall)
            self.close_connection = True
            return
        self.wfile.write(body)


class Server:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.behaviour = self.behaviour
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.stopped = False

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    if srv.behaviour.gone is not None:
        srv.behaviour.gone.set()
    srv.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache, fast retries, and the `models` command in the dispatcher."""
    root = tmp_path / "cache"
    monkeypatch.setenv(model_cache.ENV_CACHE, str(root))
    monkeypatch.delenv(download.ENV_MIRROR, raising=False)
    monkeypatch.setattr(download, "BACKOFF", 0.01)
    monkeypatch.setattr(download, "TIMEOUT", 5.0)
    monkeypatch.setattr(download, "ATTEMPTS", 3)
    monkeypatch.setitem(edge.cli.COMMANDS, "models", ("edge.commands.models", "list and pull catalogue models"))
    return root


@pytest.fixture
def demo_zip(server, monkeypatch) -> bytes:
    """A test catalogue entry: a zip holding the demo model and a Google-style labelmap, pinned."""
    model = DEMO_MODEL.read_bytes()
    archive = make_zip({"detect.tflite": model, "labelmap.txt": LABELMAP.encode()})
    server.behaviour.files["/test.zip"] = archive
    add_entry(monkeypatch, url=f"{server.url}/test.zip", sha256=sha256(archive), size_bytes=len(archive))
    return archive


def add_entry(monkeypatch, **fields) -> CatalogEntry:
    model = DEMO_MODEL.read_bytes()
    values = dict(name=NAME, description="demo detector, zipped for the tests", url="", license="Apache-2.0",
                  input_size=(224, 224), input_dtype="uint8", archive=ZIP, sha256=None, size_bytes=None,
                  model_member="detect.tflite", model_sha256=sha256(model), model_bytes=len(model),
                  labels_member="labelmap.txt", labels_background="???", labels_unused=("???",))
    values.update(fields)
    entry = CatalogEntry(**values)
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    return entry


def edge_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = edge.cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("edge: error:")]
    assert len(lines) == 1, err
    return lines[0]


def assert_nothing_left(root: Path) -> None:
    folder = root / NAME
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert left == [], left


# ---- the happy path ----------------------------------------------------------------------------

def test_pull_caches_the_verified_model_and_labels_and_a_second_pull_is_a_no_op(cache, server, demo_zip, capsys):
    code, out, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0, err
    model = cache / NAME / f"{NAME}.tflite"
    assert out.strip() == str(model)
    assert model.read_bytes() == DEMO_MODEL.read_bytes()
    assert (cache / NAME / "labels.txt").read_text() == STORED_LABELS
    record = json.loads((cache / NAME / "source.json").read_text())
    assert record["sha256"] == sha256(demo_zip) and record["model_sha256"] == sha256(DEMO_MODEL.read_bytes())
    assert not list((cache / NAME).glob("*.part*"))
    assert "verified" in err and len(server.behaviour.requests) == 1

    code, out, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0 and "already in the cache" in err
    assert len(server.behaviour.requests) == 1  # nothing downloaded

    code, out, err = edge_main(capsys, "models")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(NAME))
    assert f"yes: {model}" in row and "224x224 uint8" in row and "Apache-2.0" in row

    code, out, err = edge_main(capsys, "models", "pull", NAME, "--force")
    assert code == 0 and len(server.behaviour.requests) == 2
    assert labels_beside(model) == cache / NAME / "labels.txt"


def test_a_damaged_cached_copy_is_downloaded_again(cache, server, demo_zip, capsys):
    assert edge_main(capsys, "models", "pull", NAME)[0] == 0
    model = cache / NAME / f"{NAME}.tflite"
    model.write_bytes(b"garbage")
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0 and "damaged" in err
    assert model.read_bytes() == DEMO_MODEL.read_bytes()


# ---- failures: one line naming the model and the URL, nothing left in the cache -------------------

def test_a_wrong_checksum_is_one_line_and_leaves_nothing(cache, server, demo_zip, capsys, monkeypatch):
    add_entry(monkeypatch, url=f"{server.url}/test.zip", sha256="0" * 64, size_bytes=len(demo_zip))
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    line = one_error(err)
    assert code == 2 and NAME in line and f"{server.url}/test.zip" in line and "checksum mismatch" in line
    assert sha256(demo_zip) in line
    assert_nothing_left(cache)


def test_a_truncated_transfer_is_resumed_with_range_and_verified(cache, server, demo_zip, capsys):
    half = len(demo_zip) // 2
    server.behaviour.cut_at, server.behaviour.cuts = half, 1
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0, err
    assert [r for _, r in server.behaviour.requests] == [None, f"bytes={half}-"]
    assert "closed the connection" in err and "resuming at" in err
    assert (cache / NAME / f"{NAME}.tflite").read_bytes() == DEMO_MODEL.read_bytes()


def test_without_range_a_truncated_transfer_is_retried_from_the_start(cache, server, demo_zip, capsys):
    server.behaviour.ranges = False
    server.behaviour.cut_at, server.behaviour.cuts = 1000, 1
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0, err
    assert len(server.behaviour.requests) == 2
    assert (cache / NAME / f"{NAME}.tflite").read_bytes() == DEMO_MODEL.read_bytes()


def test_without_range_a_transfer_that_keeps_breaking_off_is_one_line(cache, server, demo_zip, capsys):
    server.behaviour.ranges = False
    server.behaviour.cut_at, server.behaviour.cuts = 1000, 99
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    line = one_error(err)
    assert code == 2 and NAME in line and f"{server.url}/test.zip" in line
    assert "gave up after" in line and "cannot resume" in line
    assert len(server.behaviour.requests) <= download.ATTEMPTS + 1  # bounded
    assert_nothing_left(cache)


def test_a_read_that_times_out_is_resumed(cache, server, demo_zip, capsys, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT", 0.3)
    server.behaviour.cut_at, server.behaviour.cuts, server.behaviour.stall = 4096, 1, 1.0
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0, err
    assert "no answer" in err and server.behaviour.requests[-1][1] == "bytes=4096-"


def test_the_server_gone_mid_download_is_one_line_and_leaves_nothing(cache, server, demo_zip, capsys):
    server.behaviour.cut_at, server.behaviour.cuts = len(demo_zip) // 3, 1
    server.behaviour.midway, server.behaviour.gone = threading.Event(), threading.Event()

    def stop_midway():
        if server.behaviour.midway.wait(10):
            server.stop()  # the listening socket closes: every retry is refused
        server.behaviour.gone.set()  # ... and the open response ends early

    threading.Thread(target=stop_midway, daemon=True).start()
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    line = one_error(err)
    assert code == 2 and NAME in line and f"{server.url}/test.zip" in line
    assert "went away mid-download" in line
    assert_nothing_left(cache)


def test_no_network_at_all_is_one_line(cache, server, demo_zip, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/test.zip"
    started = time.monotonic()
    code, _, err = edge_main(capsys, "models", "pull", NAME, "--url", url)
    line = one_error(err)
    assert code == 2 and NAME in line and url in line and "connection refused" in line
    assert time.monotonic() - started < 2  # no retries against a refused connection
    assert_nothing_left(cache)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    code, _, err = edge_main(capsys, "models", "pull", NAME, "--url", "http://models.example/test.zip")
    line = one_error(err)
    assert code == 2 and "cannot resolve models.example" in line and "http://models.example/test.zip" in line


def test_http_errors_are_one_line_and_only_server_errors_are_retried(cache, server, demo_zip, capsys):
    code, _, err = edge_main(capsys, "models", "pull", NAME, "--url", f"{server.url}/moved.zip")
    line = one_error(err)
    assert code == 2 and "HTTP 404" in line and f"{server.url}/moved.zip" in line and NAME in line
    assert len(server.behaviour.requests) == 1

    server.behaviour.status = 500
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    line = one_error(err)
    assert code == 2 and "HTTP 500" in line and "gave up after 3 tries" in line
    assert len(server.behaviour.requests) == 1 + download.ATTEMPTS
    assert_nothing_left(cache)


def test_a_full_disk_is_one_line_and_leaves_nothing(cache, server, demo_zip, capsys, monkeypatch):
    def full(out, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(http_fetch, "_write", full)
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    line = one_error(err)
    assert code == 2 and "disk full" in line and NAME in line and f"{server.url}/test.zip" in line
    assert_nothing_left(cache)


def test_unsafe_members_and_absurd_declared_sizes_are_refused(cache, server, capsys, monkeypatch):
    model = DEMO_MODEL.read_bytes()
    evil = make_zip({"detect.tflite": model, "labelmap.txt": LABELMAP.encode(), "../../etc/cron.d/x": b"x"})
    bomb = bytearray(make_zip({"detect.tflite": model, "labelmap.txt": LABELMAP.encode(), "pad.bin": b"0" * 100}))
    entry = bomb.rfind(b"PK\x01\x02")  # pad.bin's central directory record: its declared size says 4 GB
    bomb[entry + 24:entry + 28] = struct.pack("<I", 0xFFFFFFF0)
    for archive, expected in ((evil, "unsafe member name"), (bytes(bomb), "zip bomb")):
        server.behaviour.files["/bad.zip"] = archive
        add_entry(monkeypatch, url=f"{server.url}/bad.zip", sha256=sha256(archive), size_bytes=len(archive))
        code, _, err = edge_main(capsys, "models", "pull", NAME)
        line = one_error(err)
        assert code == 2 and expected in line and NAME in line
        assert_nothing_left(cache)


def test_an_entry_without_a_pin_is_refused_before_any_download(cache, server, capsys, monkeypatch):
    add_entry(monkeypatch, url=f"{server.url}/test.zip", sha256=None)
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    line = one_error(err)
    assert code == 2 and f"no pinned checksum for {NAME}: refusing to download unverified" in line
    assert server.behaviour.requests == []
    with pytest.raises(EdgeError, match="no pinned checksum for coral-ssd-v2"):
        download.pull("coral-ssd-v2", url=f"{server.url}/x.tflite")
    assert server.behaviour.requests == []


def test_a_plain_tflite_entry_with_separate_labels_and_a_file_url(cache, server, capsys, monkeypatch, tmp_path):
    model = DEMO_MODEL.read_bytes()
    labels = b"0 person\n1 bicycle\n3 car\n"
    server.behaviour.files.update({"/m/demo.tflite": model, "/m/labels.txt": labels})
    add_entry(monkeypatch, url=f"{server.url}/m/demo.tflite", archive=TFLITE, sha256=sha256(model),
              size_bytes=len(model), model_member=None, labels_member=None, labels_background=None,
              labels_unused=(), labels_url=f"{server.url}/m/labels.txt", labels_sha256=sha256(labels))
    code, out, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0, err
    assert Path(out.strip()).read_bytes() == model
    assert (cache / NAME / "labels.txt").read_bytes() == labels

    copy = tmp_path / "copy.tflite"  # an offline copy on a USB stick
    copy.write_bytes(model)
    code, _, err = edge_main(capsys, "models", "pull", NAME, "--force", "--url", copy.as_uri())
    assert code == 0, err


# ---- resolve_model, labels_beside, and the real catalogue entry ------------------------------------

def test_resolve_model_on_a_path_a_name_and_a_bad_name(cache, server, demo_zip, tmp_path):
    own = tmp_path / "mine.tflite"
    own.write_bytes(DEMO_MODEL.read_bytes())
    assert resolve_model(own) == own and resolve_model(str(own)) == own
    assert labels_beside(own) is None  # not a pulled model

    with pytest.raises(EdgeError, match=f"{NAME}: not in the cache"):
        resolve_model(NAME, pull=False)
    messages = []
    model = resolve_model(NAME, log=messages.append)
    assert model == cache / NAME / f"{NAME}.tflite" and model.read_bytes() == DEMO_MODEL.read_bytes()
    assert messages[0] == f"{NAME}: not in the cache, downloading from {server.url}/test.zip ({len(demo_zip) / 1e6:.1f} MB)"
    assert labels_beside(model).read_text() == STORED_LABELS

    messages.clear()
    assert resolve_model(NAME, log=messages.append) == model and messages == []  # cached: no word, no request
    assert len(server.behaviour.requests) == 1

    with pytest.raises(EdgeError) as info:
        resolve_model("coco-sd")
    assert "\n" not in str(info.value) and "coco-ssd" in str(info.value) and NAME in str(info.value)


def test_the_catalogue_pins_the_fixture_model(ssd_model_path):
    entry = catalog.get_entry("coco-ssd")
    data = ssd_model_path.read_bytes()
    assert entry.model_bytes == len(data) == 4_183_312
    assert entry.model_sha256 == sha256(data)
    assert entry.sha256 == "a809cd290b4d6a2e8a9d5dad076e0bd695b8091974e0eed1052b480b2f21b6dc"
    assert entry.url.endswith("/models/tflite/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.zip")


def test_coco_ssd_from_a_mirror_unpacks_the_fixture_and_its_labelmap(cache, server, capsys, monkeypatch,
                                                                    ssd_model_path, coco_labels_path):
    labels = coco_labels_path.read_text()
    labelmap = "???\n" + labels.replace("n/a", "???")  # Google's labelmap.txt layout
    archive = make_zip({"detect.tflite": ssd_model_path.read_bytes(), "labelmap.txt": labelmap.encode()})
    server.behaviour.files["/mirror/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.zip"] = archive
    monkeypatch.setenv(download.ENV_MIRROR, f"{server.url}/mirror/")
    # Our zip is not Google's byte for byte: pin it; the member is still checked against the catalogue.
    code, out, err = edge_main(capsys, "models", "pull", "coco-ssd", "--sha256", sha256(archive))
    assert code == 0, err
    model = Path(out.strip())
    assert model == cache / "coco-ssd" / "coco-ssd.tflite"
    assert labels_beside(model).read_text() == labels
    assert resolve_model("coco-ssd") == model


def test_a_part_left_by_a_killed_pull_is_resumed_and_a_bad_one_replaced(cache, server, demo_zip, capsys):
    folder = cache / NAME
    folder.mkdir(parents=True)
    half = len(demo_zip) // 2
    (folder / f"{NAME}.zip.part").write_bytes(demo_zip[:half])
    code, _, err = edge_main(capsys, "models", "pull", NAME)
    assert code == 0, err
    assert server.behaviour.requests == [("/test.zip", f"bytes={half}-")]

    (folder / f"{NAME}.zip.part").write_bytes(b"\0" * half)  # from another file, or damaged
    code, _, err = edge_main(capsys, "models", "pull", NAME, "--force")
    assert code == 0, err
    assert "does not match" in err and server.behaviour.requests[-1] == ("/test.zip", None)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "labels.txt", "source.json", f"{NAME}.tflite"]


def test_a_second_pull_of_the_same_model_waits_for_the_first(cache, server, demo_zip):
    folder = cache / NAME
    messages, done = [], []
    with model_cache._locked(folder, NAME, messages.append):  # another process is pulling it
        waiter = threading.Thread(target=lambda: done.append(download.pull(NAME, log=messages.append)))
        waiter.start()
        deadline = time.monotonic() + 5
        while not any("another pull" in m for m in messages) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not done and server.behaviour.requests == []
    waiter.join(10)
    assert done == [folder / f"{NAME}.tflite"] and len(server.behaviour.requests) == 1
