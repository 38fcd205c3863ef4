"""Service soak: ``edge run`` with tracking, zones, MQTT and JSON lines on, N cameras x F frames each.

What it proves (``benchmarks/targets.py``, "service soak"): RSS drift after warm-up under 2 MB, and
in ``--in-process`` mode zero net heap growth (tracemalloc).

Default mode: the real product, as a user runs it. The script writes a zones file per camera (each
its own zones and lines, so enter/leave/cross events happen) and a cameras file, starts Debian's
mosquitto on a free 127.0.0.1 port and a subscriber (a child process: paho on ``edgekit/#`` and
``homeassistant/#``, counting what arrives), then runs ::

    edge run --config cameras.json --track --mqtt mqtt://127.0.0.1:PORT --json out.jsonl \\
        --threads 1 --max-frames N*(F+500) --duration CAP --stats-every 5

(``--max-frames`` counts all cameras together with ``--config``. The scheduler is fair and the
sources are lossless, but under load the shares differ by tens of frames, so with several cameras
``--max-frames`` is a cap, N*(F + ``--margin``), and the script sends SIGTERM (as ``systemctl stop``
does: edge run finishes the frame in hand and stops cleanly) once the JSON lines show F frames for
every camera; samples after the SIGTERM are left out of the figures.) With ``--cameras 1`` the single-camera form is run
instead (``--source S --zones Z --camera cam0``, LiveLoop: how one camera is run), or ``--form
config`` for a cameras file of one. Every ``--every`` seconds (2) it reads the child's VmRSS, VmHWM,
RssAnon, RssFile and CPU time from /proc/PID and tails the JSON lines file for each camera's frame,
detection, tracked-detection and event counts. Warm-up: the first ``--warmup`` frames of every camera
(2,000); the RSS "at warm-up" is the first sample where every camera has passed it.

``--in-process``: the same argument list parsed by edge's own parser and the same pipeline built in
this process with ``edge.commands.run``'s helpers (``detector_from_args``, ``build_cameras`` +
``MqttCameras`` + ``MultiLoop`` as ``_run_cameras`` does; ``_event_stage`` + ``open_source_waiting`` +
``build_sinks`` + ``LiveLoop`` for one camera), plus one loop-wide probe sink (last, after the others)
that samples traced memory and RSS every ``--trace-every`` frames. tracemalloc starts before the
detector is built; at the warm-up frame and at the last frame the probe runs ``gc.collect()`` and
takes a snapshot; the net traced growth is the end's traced bytes minus the warm-up's (both with the
first snapshot alive), the trend is the least-squares slope of traced bytes after warm-up (each
sample taken after a ``gc.collect()``, so cyclic garbage waiting for a gen-2 collection, tens of KB
that pile up for minutes, does not pass for growth; ``--no-sample-gc`` to sample without), and the
top growth sites are ``snapshot_end.compare_to(snapshot_warmup, "lineno")`` without tracemalloc's
own lines. RSS is reported too, but tracemalloc's own memory is in it.

Sources (``--source``): ``synthetic`` (default): the bundled demo model on ``synthetic`` cameras of
4:3 sizes whose scenes have 3-4 moving shapes (288x216, 256x192, 368x276, 240x180, ...: the
synthetic scene's shape count follows its size, seed 0); ``traffic``: Google's COCO SSD on
``../shared/fixtures/video/traffic_960x540.mp4`` (20 real frames, 30 fps) with ``loop: true``, cars
counted by a zone and two lines (the tracks break at every rewind, so the tracker ends and starts
tracks every 20 frames).

Writes benchmarks/results/soak_service.json (4 cameras) or soak_service_1cam[_inprocess][_traffic].json
and a .png beside it.

    nice -n 10 .venv/bin/python benchmarks/soak_service.py --frames 1000 --warmup 200 --out /tmp/check.json
    nice -n 10 .venv/bin/python benchmarks/soak_service.py                               # 4 cameras x 20,000
    nice -n 10 .venv/bin/python benchmarks/soak_service.py --cameras 1                   # single-camera form
    nice -n 10 .venv/bin/python benchmarks/soak_service.py --cameras 1 --in-process      # + tracemalloc
    nice -n 10 .venv/bin/python benchmarks/soak_service.py --cameras 1 --source traffic  # COCO SSD, real video
    nice -n 10 .venv/bin/python benchmarks/soak_service.py --check-percentile 90         # the top heap site alone

``--check-percentile``: the in-process runs' one growth site (numpy's fromnumeric.py:97 under
``StageTimes.percentiles``, which the MQTT stats thread and the stats lines call every few seconds)
alone, on a second thread, with and without tracemalloc: sys.getallocatedblocks() and RSS say
whether anything grows when tracemalloc is off (soak_service_percentile_check.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.files import atomic_write_json  # noqa: E402
from edge.live.sinks import Sink  # noqa: E402
from edge.memory import rss_bytes, rss_slope  # noqa: E402
from targets import format_soak_targets, soak_verdicts  # noqa: E402  (benchmarks/targets.py)

MB = 2**20
RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = ROOT.parent / "shared" / "fixtures"
COCO_MODEL = FIXTURES / "models" / "ssd_mobilenet_v1_coco_quant.tflite"
COCO_LABELS = FIXTURES / "models" / "coco_labels.txt"
TRAFFIC_VIDEO = FIXTURES / "video" / "traffic_960x540.mp4"
MOSQUITTO = next((p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(p)), None)

# 4:3 synthetic sizes whose seed-0 scene has 3 or 4 shapes (320x240 has one); one per camera.
SYNTHETIC_SIZES = ("288x216", "256x192", "368x276", "240x180", "320x256", "416x312", "448x336", "352x288")
# Each camera its own zones and lines (normalised), so each one's events differ.
SYNTHETIC_ZONES = (
    {"zones": [{"name": "low", "points": [[0, 0.7], [1, 0.7], [1, 1], [0, 1]]}],
     "lines": [{"name": "h50", "points": [[0, 0.5], [1, 0.5]]}, {"name": "v60", "points": [[0.6, 0], [0.6, 1]]}]},
    {"zones": [{"name": "left", "points": [[0, 0], [0.35, 0], [0.35, 1], [0, 1]]}],
     "lines": [{"name": "v50", "points": [[0.5, 0], [0.5, 1]]}]},
    {"zones": [{"name": "centre", "points": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]}],
     "lines": [{"name": "diag", "points": [[0, 0], [1, 1]]}, {"name": "h30", "points": [[0, 0.3], [1, 0.3]]}]},
    {"zones": [{"name": "right", "points": [[0.65, 0], [1, 0], [1, 1], [0.65, 1]]},
               {"name": "top", "points": [[0, 0], [1, 0], [1, 0.3], [0, 0.3]]}],
     "lines": [{"name": "v33", "points": [[0.33, 1], [0.33, 0]]}]},
)
TRAFFIC_ZONES = {"classes": ["car", "truck", "bus"], "min_frames": 2,
                 "zones": [{"name": "road", "points": [[0, 0.55], [1, 0.55], [1, 1], [0, 1]]}],
                 "lines": [{"name": "h60", "points": [[0, 0.6], [1, 0.6]]}, {"name": "v50", "points": [[0.5, 0], [0.5, 1]]}]}


# ---- the broker and the subscriber -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """mosquitto on a free 127.0.0.1 port, anonymous, no persistence, its log in ``folder``."""

    def __init__(self, folder: Path) -> None:
        if MOSQUITTO is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        self.port = free_port()
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "log_type error", "log_type warning", "log_type notice"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto', who cannot read our folder
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


def subscriber_child(port: int, out: Path) -> int:
    """``--subscriber PORT OUT``: count every message on edgekit/# and homeassistant/# by kind and
    camera; write the counts to OUT once subscribed, every second, and at SIGTERM."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    counts: dict = {"subscribed": False, "total": 0, "by_kind": {}, "by_camera": {}, "event_types": {},
                    "end_reasons": {}, "bad_payloads": 0, "connects": 0}
    stop = threading.Event()

    def kind_of(topic: str) -> tuple[str, str | None]:
        parts = topic.split("/")
        if parts[0] == "homeassistant":
            return "discovery", None
        if len(parts) >= 3 and parts[0] == "edgekit":
            return parts[2], parts[1]
        return "other", None

    def connected(client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            with lock:
                counts["connects"] += 1
            client.subscribe([("edgekit/#", 1), ("homeassistant/#", 1)])

    def subscribed(client, userdata, mid, codes, properties) -> None:
        with lock:
            counts["subscribed"] = True
        dump()

    def message(client, userdata, msg) -> None:
        kind, camera = kind_of(msg.topic)
        with lock:
            counts["total"] += 1
            counts["by_kind"][kind] = counts["by_kind"].get(kind, 0) + 1
            if camera is not None:
                cam = counts["by_camera"].setdefault(camera, {})
                cam[kind] = cam.get(kind, 0) + 1
            if kind == "events":
                try:
                    payload = json.loads(msg.payload)
                    typ = payload["type"]
                    counts["event_types"][typ] = counts["event_types"].get(typ, 0) + 1
                    if typ == "end":
                        reason = str(payload["after"].get("reason"))
                        counts["end_reasons"][reason] = counts["end_reasons"].get(reason, 0) + 1
                except (ValueError, KeyError, TypeError):
                    counts["bad_payloads"] += 1

    def dump() -> None:
        with lock:
            text = json.dumps(counts)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, out)

    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-sub-{os.getpid()}")
    client.on_connect, client.on_subscribe, client.on_message = connected, subscribed, message
    client.reconnect_delay_set(1, 2)
    client.connect_async("127.0.0.1", port, keepalive=30)
    client.loop_start()
    while not stop.wait(1.0):
        dump()
    client.disconnect()
    client.loop_stop()
    dump()
    return 0


class Subscriber:
    """The subscriber child: started, waited for until subscribed, stopped, read."""

    def __init__(self, port: int, folder: Path) -> None:
        self.out = folder / "subscriber.json"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--subscriber", str(port),
                                      str(self.out)], stdout=subprocess.DEVNULL, stderr=open(folder / "sub.log", "wb"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.read().get("subscribed"):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"the subscriber exited {self.proc.returncode}: {(folder / 'sub.log').read_text()}")
            time.sleep(0.05)
        raise RuntimeError("the subscriber did not subscribe within 20 s")

    def read(self) -> dict:
        try:
            return json.loads(self.out.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self, settle: float = 1.5) -> dict:
        time.sleep(settle)  # the last messages (final counts, offline) in flight
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self.read()


# ---- the set-up: cameras, zones, the command -------------------------------------------------------


def write_setup(folder: Path, args: argparse.Namespace, broker_url: str) -> tuple[list[str], list[str], dict]:
    """Zones files, the cameras file; returns (camera names, edge run argv after ``edge``, set-up)."""
    names = [f"cam{i}" for i in range(args.cameras)]
    cameras = []
    for i, name in enumerate(names):
        if args.source == "traffic":
            zones, source, extra = TRAFFIC_ZONES, str(TRAFFIC_VIDEO), {"loop": True}
        else:
            zones = {"normalized": True, "min_frames": 3, **SYNTHETIC_ZONES[i % len(SYNTHETIC_ZONES)]}
            source, extra = f"synthetic:{SYNTHETIC_SIZES[i % len(SYNTHETIC_SIZES)]}", {}
        zones = {"normalized": True, **zones}
        (folder / f"{name}.zones.json").write_text(json.dumps(zones, indent=1))
        cameras.append({"name": name, "source": source, **extra, "zones": f"{name}.zones.json"})
    (folder / "cameras.json").write_text(json.dumps({"cameras": cameras}, indent=1))
    single = args.cameras == 1 and args.form == "single"
    argv = ["run"]
    if args.source == "traffic":
        argv += ["--model", str(COCO_MODEL), "--labels", str(COCO_LABELS)]
    if single:
        cam = cameras[0]
        argv += ["--source", cam["source"], *(["--loop"] if cam.get("loop") else []),
                 "--zones", str(folder / cam["zones"]), "--camera", cam["name"]]
    else:
        argv += ["--config", str(folder / "cameras.json")]
        if args.detectors > 1:
            argv += ["--detectors", str(args.detectors)]
    argv += ["--track", "--mqtt", broker_url, "--json", str(folder / "out.jsonl"), "--threads", str(args.threads),
             "--max-frames", str(args.max_frames_total), "--duration", str(args.cap), "--stats-every", "5"]
    setup = {"cameras": cameras, "zones": {c["name"]: json.loads((folder / c["zones"]).read_text()) for c in cameras},
             "form": "single-camera (--source/--zones/--camera, LiveLoop)" if single
             else "--config (MultiLoop)"}
    return names, argv, setup


class JsonTail:
    """Counts of the JSON lines file so far, read incrementally: per camera frames, detections,
    tracked detections, events by kind."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path, self.offset, self.rest = path, 0, b""
        self.single = names[0] if len(names) == 1 else None
        self.cams = {n: {"frames": 0, "detections": 0, "tracked": 0, "events": {}} for n in names}
        self.bad = 0

    def update(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                self.bad += 1
                continue
            cam = self.cams.get(record.get("camera", self.single))
            if cam is None:
                self.bad += 1
            elif "event" in record:
                key = f"{record['event']}"
                cam["events"][key] = cam["events"].get(key, 0) + 1
            elif "detections" in record:
                cam["frames"] += 1
                cam["detections"] += len(record["detections"])
                cam["tracked"] += sum(1 for d in record["detections"] if d.get("track") is not None)

    def frames(self) -> list[int]:
        return [c["frames"] for c in self.cams.values()]

    def events_total(self) -> int:
        return sum(sum(c["events"].values()) for c in self.cams.values())


def proc_status(pid: int) -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile (bytes), Threads and CPU seconds of ``pid``; {} once it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0]) * 1024
                elif key == "Threads":
                    out[key] = int(value)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return {}
    return out if "VmRSS" in out else {}  # a zombie (exited, not yet reaped) has no VmRSS


# ---- analysis --------------------------------------------------------------------------------------


def analyse_rss(frames: np.ndarray, rss: np.ndarray, warm_total: int) -> dict:
    """Drift (last minus at warm-up), robust drift (median of the last 10% minus median of the first
    10% after warm-up, by frames), least-squares slope (bytes per frame, all cameras together), over the
    samples from the warm-up to the end of the loop."""
    keep = frames >= warm_total
    f, r = frames[keep], rss[keep]
    if f.size < 3:
        return {"samples_after_warmup": int(f.size)}
    span = f[-1] - f[0]
    early, late = r[f <= f[0] + 0.1 * span], r[f >= f[-1] - 0.1 * span]
    return {
        "samples_after_warmup": int(f.size),
        "first_sample_frames": int(f[0]), "last_sample_frames": int(f[-1]),
        "at_warmup_bytes": int(r[0]), "last_bytes": int(r[-1]),
        "drift_bytes": int(r[-1] - r[0]),
        "robust_drift_bytes": int(np.median(late) - np.median(early)),
        "robust_windows_samples": [int(early.size), int(late.size)],
        "slope_bytes_per_frame": round(rss_slope(f, r), 3),
        "min_bytes": int(r.min()), "max_bytes": int(r.max()),
        "median_bytes": int(np.median(r)),
    }


def versions() -> dict:
    from edge.provenance import machine_info, package_versions

    info = machine_info()
    info["versions"].update(package_versions(("paho-mqtt", "matplotlib")))
    try:
        info["versions"]["mosquitto"] = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True,
                                                       timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError, TypeError):
        info["versions"]["mosquitto"] = None
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "edge", "convert"],
                               capture_output=True, text=True, timeout=10).stdout
        import hashlib

        digest = hashlib.sha256()
        for path in sorted((ROOT / "edge").rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
        info["git"] = {"head": head, "product_code_modified": bool(dirty),
                       "modified_product_files": [line[3:] for line in dirty.splitlines()],
                       "edge_tree_sha256": digest.hexdigest()}
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def parse_stderr(text: str) -> dict:
    """The run's own summary: elapsed, fps, stop reason, its MQTT report lines."""
    out: dict = {}
    m = re.search(r"cameras: \d+, (\d+) frames in ([\d.]+) s, ([\d.]+) fps \(([^)]*)\)", text)
    if m:
        out.update(frames=int(m.group(1)), elapsed_s=float(m.group(2)), fps=float(m.group(3)), stop=m.group(4))
    m = re.search(r"time:\s+([\d.]+) s, ([\d.]+) fps \(([^)]*)\)", text)
    if m:
        out.update(elapsed_s=float(m.group(1)), fps=float(m.group(2)), stop=m.group(3))
    out["mqtt_reports"] = re.findall(r"mqtt: \d+ event messages.*", text)
    out["mqtt_event_messages_reported"] = sum(int(n) for n in re.findall(r"mqtt: (\d+) event messages", text))
    # "mqtt: N event messages[ (K updates)], M messages in all to ..."
    out["mqtt_messages_reported"] = sum(int(n) for n in re.findall(
        r"mqtt: \d+ event messages(?: \([^)]*\))?, (\d+) messages in all", text))
    out["errors"] = [line for line in text.splitlines()
                     if re.search(r"(?i)\b(error|warning|exception)\b|traceback", line)][:20]
    return out


# ---- default mode: the real edge run subprocess -------------------------------------------------


def run_subprocess(args, folder: Path, names: list[str], argv: list[str]) -> dict:
    edge_exe = Path(sys.executable).parent / "edge"
    command = [str(edge_exe), *argv] if edge_exe.exists() else [sys.executable, "-m", "edge.cli", *argv]
    stderr_path = folder / "edge_run.stderr"
    tail = JsonTail(folder / "out.jsonl", names)
    samples = []  # (t, total frames, min camera frames, rss, anon, file, hwm, threads, cpu, events, load1)
    t0 = time.monotonic()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    print(f"started pid {proc.pid}: {' '.join(command)}", flush=True)
    last_print = 0.0
    killed = False
    stop_sent = None  # (seconds, frames per camera) when the SIGTERM went
    hwm = 0
    try:
        while True:
            status = proc_status(proc.pid)
            alive = proc.poll() is None
            tail.update()
            if status and alive:
                frames = tail.frames()
                hwm = max(hwm, status.get("VmHWM", 0))
                samples.append((time.monotonic() - t0, sum(frames), min(frames), status["VmRSS"],
                                status.get("RssAnon", 0), status.get("RssFile", 0), status.get("VmHWM", 0),
                                status.get("Threads", 0), status.get("cpu_s", 0.0), tail.events_total(),
                                os.getloadavg()[0], stop_sent is None))
                if time.monotonic() - last_print >= 30:
                    last_print = time.monotonic()
                    print(f"  {samples[-1][0]:6.0f} s: frames per camera {frames}, RSS {status['VmRSS'] / MB:.2f} MB, "
                          f"events {tail.events_total()}, load {os.getloadavg()[0]:.2f}", flush=True)
            if not alive:
                break
            if time.monotonic() - t0 > args.cap + 120 and not killed:
                proc.send_signal(signal.SIGTERM)
                killed = True
            next_sample = time.monotonic() + args.every
            while time.monotonic() < next_sample and proc.poll() is None:
                time.sleep(0.1)
                if len(names) > 1 and stop_sent is None:  # the progress, every 0.1 s: stop as soon as all are there
                    tail.update()
                    if min(tail.frames()) >= args.frames:
                        proc.send_signal(signal.SIGTERM)  # edge run finishes the frame in hand and stops
                        stop_sent = (round(time.monotonic() - t0, 2), dict(zip(names, tail.frames())))
    finally:
        if proc.poll() is None:
            proc.kill()
    rc = proc.wait()
    time.sleep(0.2)
    tail.update()
    stderr = stderr_path.read_text(errors="replace")
    return {"command": command, "returncode": rc, "pid": proc.pid, "samples": samples, "tail": tail,
            "sigterm_at": stop_sent,
            "stderr": stderr, "wall_s": time.monotonic() - t0, "vmhwm_bytes": hwm}


def summarise_subprocess(args, run: dict, names: list[str]) -> dict:
    s = run["samples"]
    n = len(names)
    end_total = args.max_frames_total
    frames = np.array([x[1] for x in s], np.int64)
    mins = np.array([x[2] for x in s], np.int64)
    rss = np.array([x[3] for x in s], np.int64)
    anon = np.array([x[4] for x in s], np.int64)
    # first sample with every camera past the warm-up; in-loop samples only (not the teardown's)
    warm_index = int(np.argmax(mins >= args.warmup)) if (mins >= args.warmup).any() else len(s)
    warm_frames = int(frames[warm_index]) if warm_index < len(s) else n * args.warmup
    in_loop = np.array([bool(x[11]) for x in s], bool) & (frames < end_total)  # not after the SIGTERM
    result_rss = analyse_rss(frames[in_loop], rss[in_loop], warm_frames)
    result_anon = analyse_rss(frames[in_loop], anon[in_loop], warm_frames)
    tail = run["tail"]
    parsed = parse_stderr(run["stderr"])
    measured = [x for x in s if x[1] >= warm_frames and x[1] < end_total]
    fps_after = ((measured[-1][1] - measured[0][1]) / (measured[-1][0] - measured[0][0])
                 if len(measured) >= 2 and measured[-1][0] > measured[0][0] else None)
    cpu = s[-1][8] if s else None
    return {
        "returncode": run["returncode"],
        "frames_per_camera": dict(zip(names, tail.frames())),
        "frames_total": sum(tail.frames()),
        "all_cameras_reached_target": min(tail.frames()) >= args.frames,
        "detections_per_camera": {k: v["detections"] for k, v in tail.cams.items()},
        "tracked_detections_per_camera": {k: v["tracked"] for k, v in tail.cams.items()},
        "events_per_camera": {k: v["events"] for k, v in tail.cams.items()},
        "events_total": tail.events_total(),
        "json_bad_lines": tail.bad,
        "rss": {**result_rss, "warmup_sample_index": warm_index, "peak_sampled_bytes": int(rss.max()) if rss.size else None,
                "vmhwm_bytes": run["vmhwm_bytes"], "first_sample_bytes": int(rss[0]) if rss.size else None,
                "final_sample_bytes": int(rss[-1]) if rss.size else None},
        "rss_anon": result_anon,
        "fps_reported": parsed.get("fps"), "elapsed_s_reported": parsed.get("elapsed_s"),
        "fps_after_warmup_measured": round(fps_after, 1) if fps_after else None,
        "stop_reason": parsed.get("stop"),
        "sigterm_when_every_camera_had_its_frames": run.get("sigterm_at"),
        "cpu_seconds": cpu, "wall_s": round(run["wall_s"], 1),
        "threads_max": max((x[7] for x in s), default=None),
        "mqtt_reports": parsed["mqtt_reports"],
        "mqtt_event_messages_reported": parsed["mqtt_event_messages_reported"],
        "mqtt_messages_reported": parsed["mqtt_messages_reported"],
        "stderr_error_lines": parsed["errors"],
        "stderr_tail": run["stderr"].splitlines()[-25:],
        "load_sampled": {"min": round(min((x[10] for x in s), default=0), 2),
                         "max": round(max((x[10] for x in s), default=0), 2)},
        "samples": {"columns": ["t_s", "frames_total", "frames_min_camera", "vmrss", "rss_anon", "rss_file",
                                "vmhwm", "threads", "cpu_s", "events", "in_loop"],
                    "rows": [[round(x[0], 2), *x[1:8], round(x[8], 2), x[9], int(x[11])] for x in s]},
    }


# ---- --in-process: the same pipeline in this process, with tracemalloc ----------------------------


class TraceProbe(Sink):
    """A loop-wide sink, after the product's own: traced bytes, tracemalloc's overhead and RSS every
    ``every`` frames into preallocated arrays; gc + snapshot at ``warm`` and at ``end`` frames."""

    def __init__(self, warm: int, end: int, every: int, gc_every_sample: bool = True) -> None:
        self.warm, self.end, self.every = warm, end, every
        self.gc_every_sample = gc_every_sample
        self.loop = None  # a MultiLoop: stopped once every camera has per_camera frames
        self.per_camera = 0
        size = end // every + 4
        self.frames = np.zeros(size, np.int64)
        self.traced = np.zeros(size, np.int64)
        self.traced_raw = np.zeros(size, np.int64)
        self.gc_s = 0.0
        self.overhead = np.zeros(size, np.int64)
        self.rss = np.zeros(size, np.int64)
        self.times = np.zeros(size, np.float64)
        self.n = 0
        self.count = 0
        self.t0 = time.monotonic()
        self.snap_warm = self.snap_end = None
        self.traced_warm = self.traced_end = None
        self.rss_warm = self.rss_end = None
        self.t_warm = self.t_end = None

    def write(self, frame, detections, annotated) -> None:
        self.count += 1
        count = self.count
        if count == self.warm:  # before this frame's sample: the snapshot's own (untraced) memory is in RSS
            gc.collect()
            self.snap_warm = tracemalloc.take_snapshot()
            self.traced_warm = tracemalloc.get_traced_memory()[0]  # with the snapshot alive, as at the end
            self.rss_warm = rss_bytes()
            self.t_warm = time.monotonic() - self.t0
        ending = self.snap_end is None and self._done(count)
        if ending:
            self.end = count
            gc.collect()
            self.traced_end = tracemalloc.get_traced_memory()[0]
            self.rss_end = rss_bytes()
            self.t_end = time.monotonic() - self.t0
        if count % self.every == 0 and self.n < self.frames.size:
            i = self.n
            self.frames[i] = count
            self.traced_raw[i] = tracemalloc.get_traced_memory()[0]
            if self.gc_every_sample:  # what is reachable: cyclic garbage waiting for its collection is not growth
                t = time.perf_counter()
                gc.collect()
                self.gc_s += time.perf_counter() - t
            self.traced[i] = tracemalloc.get_traced_memory()[0]
            self.overhead[i] = tracemalloc.get_tracemalloc_memory()
            self.rss[i] = rss_bytes()
            self.times[i] = time.monotonic() - self.t0
            self.n = i + 1
        if ending:
            self.snap_end = tracemalloc.take_snapshot()
            if self.loop is not None:  # as the subprocess mode's SIGTERM: finish this frame and stop
                self.loop.stop("every camera has its frames")

    def _done(self, count: int) -> bool:
        """At ``end`` frames in all, and with several cameras once every camera has ``per_camera``."""
        if count < self.end:
            return False
        return self.loop is None or min(c.processed for c in self.loop.cameras) >= self.per_camera


def run_in_process(args, folder: Path, names: list[str], argv: list[str]) -> dict:
    """The pipeline ``edge run`` builds for ``argv``, built here with its helpers (see the module)."""
    tracemalloc.start(args.trace_frames)
    from edge.cli import build_parser
    from edge.commands import run as run_cmd
    from edge.commands._args import detector_from_args, runtime_lines
    from edge.events.mqtt_target import parse_mqtt_url
    from edge.live.loop import LiveLoop
    from edge.live.sources import open_source_waiting

    args_run = build_parser(argv).parse_args(argv)
    # run.main's preamble for the options used here (no preview, metrics, clips, notify)
    parse_mqtt_url(args_run.mqtt)
    args_run.metrics_token = args_run.preview_token = None
    run_cmd.check_run_paths(args_run)
    specs = None
    if args_run.config is not None:
        from edge.events.mqtt_cameras import check_camera_topics
        from edge.live.cameras_config import load_cameras_config

        specs = load_cameras_config(args_run.config)
        check_camera_topics([spec.name for spec in specs], f"--config {args_run.config}")
    tracking = args_run.track or args_run.zones is not None or bool(specs and any(s.zones for s in specs))
    high_score = args_run.score
    if tracking:
        args_run.score = min(args_run.track_low_score, high_score)
    detector = detector_from_args(args_run)  # --threads N: no tuning, as in run.main
    run_cmd._log(f"model {detector.describe()}")
    for line in runtime_lines(detector.runtime_info):
        run_cmd._log(line)
    n = len(names)
    probe = TraceProbe(n * args.warmup, n * args.frames, args.trace_every, not args.no_sample_gc)
    t0 = time.monotonic()
    if specs is not None:  # run._run_cameras, with the probe beside the notify/metrics sinks
        from edge.events.mqtt_cameras import MqttCameras
        from edge.live.cameras_config import build_cameras
        from edge.live.multiloop import MultiLoop

        cameras, shared = build_cameras(specs, detector, json_target=args_run.json, clips=args_run.clips,
                                        clip_options={"pre_roll": args_run.pre_roll, "post_roll": args_run.post_roll},
                                        track=tracking, high_score=high_score, low_score=args_run.track_low_score,
                                        wait=args_run.wait_for_source > 0, log=run_cmd._log)
        mqtt = MqttCameras(args_run.mqtt, cameras, log=run_cmd._log)
        run_cmd._log(mqtt.describe())
        loop = MultiLoop(detector, cameras, sinks=[probe], max_frames=args_run.max_frames,
                         duration=args_run.duration, stats_every=args_run.stats_every, log=run_cmd._log)
        probe.loop, probe.per_camera = loop, args.frames
        restore = loop.install_signal_handlers()
        try:
            summary = loop.run()
        finally:
            restore()
            for sink in shared:
                sink.close()
        print(summary.format(), file=sys.stderr, flush=True)
        reports = loop.reports()
        per_camera = {c.name: c.frames_processed for c in summary.cameras}
    else:  # run.main's single-camera path, the probe after build_sinks' sinks
        events = run_cmd._event_stage(args_run, detector, high_score)
        source = open_source_waiting(args_run.source, args_run.wait_for_source, log=run_cmd._log, loop=args_run.loop,
                                     realtime=args_run.realtime, stall_timeout=args_run.stall_timeout)
        sinks = run_cmd.build_sinks(args_run, source, events) + [probe]
        loop = LiveLoop(detector, source, sinks, max_frames=args_run.max_frames, duration=args_run.duration,
                        stats_every=args_run.stats_every, log=run_cmd._log, thread_candidates=None, events=events)
        restore = loop.install_signal_handlers()
        try:
            summary = loop.run()
        finally:
            restore()
        print(summary.format(), file=sys.stderr, flush=True)
        reports = [line for line in (s.report() for s in sinks) if line]
        per_camera = {names[0]: summary.frames_processed}
    for line in reports:
        run_cmd._log(line)
    wall = time.monotonic() - t0
    heap = heap_report(probe, args)
    tracemalloc.stop()
    tail = JsonTail(Path(args_run.json), names)
    tail.update()
    k = int(np.searchsorted(probe.frames[:probe.n], probe.end, side="right"))  # up to the end snapshot
    frames, rss = probe.frames[:k], probe.rss[:k]
    rss_result = analyse_rss(frames, rss, probe.warm)
    overhead = probe.overhead[:k]
    parsed = parse_stderr("\n".join(reports))
    return {
        "frames_per_camera": per_camera, "frames_per_camera_json": dict(zip(names, tail.frames())),
        "frames_total": int(summary.frames_processed),
        "all_cameras_reached_target": min(per_camera.values()) >= args.frames,
        "detections_per_camera": {k2: v["detections"] for k2, v in tail.cams.items()},
        "tracked_detections_per_camera": {k2: v["tracked"] for k2, v in tail.cams.items()},
        "events_per_camera": {k2: v["events"] for k2, v in tail.cams.items()},
        "events_total": tail.events_total(), "json_bad_lines": tail.bad,
        "heap": heap,
        "rss": {**rss_result, "note": "in-process RSS includes tracemalloc's own memory (see tracemalloc_overhead)",
                "peak_sampled_bytes": int(rss.max()) if rss.size else None},
        "tracemalloc_overhead": {"at_warmup_bytes": int(overhead[np.argmax(frames >= probe.warm)]) if k else None,
                                 "at_end_bytes": int(overhead[-1]) if k else None},
        "fps_reported": round(summary.fps, 1), "elapsed_s_reported": round(summary.elapsed_s, 1),
        "fps_after_warmup_measured": round((probe.end - probe.warm) / (probe.t_end - probe.t_warm), 1)
        if probe.t_end and probe.t_warm else None,
        "stop_reason": summary.stop_reason, "wall_s": round(wall, 1),
        "mqtt_reports": reports and [r for r in reports if r.startswith("mqtt:")],
        "mqtt_event_messages_reported": parsed["mqtt_event_messages_reported"],
        "mqtt_messages_reported": parsed["mqtt_messages_reported"],
        "samples": {"columns": ["t_s", "frames_total", "traced", "traced_before_gc", "tracemalloc_overhead", "rss"],
                    "rows": [[round(float(probe.times[i]), 2), int(frames[i]), int(probe.traced[i]),
                              int(probe.traced_raw[i]), int(overhead[i]), int(rss[i])] for i in range(k)]},
    }


def heap_report(probe: TraceProbe, args) -> dict:
    if probe.snap_warm is None or probe.snap_end is None:
        return {"error": "the run did not reach the warm-up and end frames"}
    k = int(np.searchsorted(probe.frames[:probe.n], probe.end, side="right"))
    frames, traced = probe.frames[:k], probe.traced[:k]
    after = frames >= probe.warm
    trend = rss_slope(frames[after], traced[after]) if after.sum() >= 3 else None
    net = int(probe.traced_end - probe.traced_warm)
    measured = probe.end - probe.warm
    filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<unknown>")]
    end, warm = probe.snap_end.filter_traces(filters), probe.snap_warm.filter_traces(filters)
    diff = end.compare_to(warm, "lineno")
    unfiltered = sum(d.size_diff for d in probe.snap_end.compare_to(probe.snap_warm, "filename"))
    f_after, t_after = frames[after], traced[after]
    span = f_after[-1] - f_after[0] if f_after.size else 0
    early, late = t_after[f_after <= f_after[0] + 0.1 * span], t_after[f_after >= f_after[-1] - 0.1 * span]
    robust = int(np.median(late) - np.median(early)) if f_after.size >= 3 else None
    grown = [d for d in diff if d.size_diff > 0]
    shrunk = [d for d in diff if d.size_diff < 0]
    top = sorted(diff, key=lambda d: -d.size_diff)[:args.top]
    tracebacks = []
    if args.trace_frames > 1:  # the callers of the biggest growth sites
        for d in sorted(end.compare_to(warm, "traceback"), key=lambda d: -d.size_diff)[:5]:
            if d.size_diff > 0:
                tracebacks.append({"size_diff_bytes": d.size_diff, "count_diff": d.count_diff,
                                   "frames": [f"{os.path.relpath(f.filename, ROOT) if f.filename.startswith(str(ROOT)) else f.filename}:{f.lineno}"
                                              for f in d.traceback]})

    def site(d) -> dict:
        frame = d.traceback[0]
        return {"file": os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) else frame.filename,
                "line": frame.lineno, "size_diff_bytes": d.size_diff, "count_diff": d.count_diff,
                "size_bytes": d.size, "count": d.count}

    return {
        "warmup_frames_total": probe.warm, "end_frames_total": probe.end,
        "traced_at_warmup_bytes": int(probe.traced_warm), "traced_at_end_bytes": int(probe.traced_end),
        "net_growth_bytes": net, "net_growth_bytes_per_frame": round(net / measured, 4),
        "trend_bytes_per_frame": None if trend is None else round(trend, 4),
        "robust_net_growth_bytes": robust,
        "robust_net_growth_bytes_per_frame": None if robust is None else round(robust / max(1, span), 4),
        "robust_windows_samples": [int(early.size), int(late.size)],
        "traced_after_warmup_min_bytes": int(traced[after].min()) if after.any() else None,
        "traced_after_warmup_max_bytes": int(traced[after].max()) if after.any() else None,
        "snapshot_diff_sum_bytes": int(sum(d.size_diff for d in diff)),
        "snapshot_diff_sum_unfiltered_bytes": int(unfiltered),
        "snapshot_diff_grown_bytes": int(sum(d.size_diff for d in grown)),
        "snapshot_diff_shrunk_bytes": int(sum(d.size_diff for d in shrunk)),
        "top_growth_sites": [site(d) for d in top if d.size_diff > 0],
        "top_shrink_sites": [site(d) for d in sorted(shrunk, key=lambda d: d.size_diff)[:5]],
        "trace_frames": args.trace_frames, "sample_every_frames": args.trace_every,
        "gc_at_snapshots": True, "gc_at_every_sample": probe.gc_every_sample, "gc_seconds": round(probe.gc_s, 2),
        "garbage_before_gc_after_warmup_median_bytes": int(np.median(probe.traced_raw[:k][after] - traced[after]))
        if after.any() else None,
        "trend_before_gc_bytes_per_frame": round(rss_slope(frames[after], probe.traced_raw[:k][after]), 4)
        if after.sum() >= 3 else None,
        "top_growth_tracebacks": tracebacks,
    }


# ---- --check-percentile: the one growth site of the in-process runs, alone ---------------------------


def percentile_child(mode: str, seconds: float) -> int:
    """``StageTimes.percentiles("invoke")`` on a second thread, as fast as it goes (the stats thread of
    MqttSink and the stats lines call it every few seconds), while the main thread records all stages;
    every ``seconds / 6``: after ``gc.collect()``, the calls so far, ``sys.getallocatedblocks()``, RSS,
    and with ``mode`` ``traced`` tracemalloc's traced bytes and the blocks it puts at numpy's
    fromnumeric.py:97 (the in-process runs' top growth site). One JSON line per sample."""
    from edge.detector.stages import StageTimes

    if mode == "traced":
        tracemalloc.start(1)
    rng = np.random.default_rng(0)
    times = StageTimes()
    for _ in range(5000):  # rings full, as after warm-up
        for stage in times.stages:
            times.record(stage, float(rng.random()))
    stop, calls = threading.Event(), [0]

    def stats() -> None:
        while not stop.is_set():
            times.percentiles("invoke")
            calls[0] += 1

    thread = threading.Thread(target=stats, daemon=True)
    thread.start()
    t0 = last = time.monotonic()
    first = True
    while True:
        now = time.monotonic()
        if first or now - last >= seconds / 6 or now - t0 >= seconds:
            first, last = False, now
            gc.collect()
            row = {"t_s": round(now - t0, 1), "calls": calls[0], "allocated_blocks": sys.getallocatedblocks(),
                   "rss_bytes": rss_bytes()}
            if mode == "traced":
                site = [st for st in tracemalloc.take_snapshot().statistics("lineno")
                        if st.traceback[0].filename.endswith("fromnumeric.py") and st.traceback[0].lineno == 97]
                row.update(traced_bytes=tracemalloc.get_traced_memory()[0],
                           site_blocks=sum(st.count for st in site), site_bytes=sum(st.size for st in site))
            print(json.dumps(row), flush=True)
            if now - t0 >= seconds:
                break
        for stage in times.stages:
            times.record(stage, float(rng.random()))
    stop.set()
    thread.join()
    return 0


def check_percentile(seconds: float, out: Path) -> int:
    result = {"benchmark": "soak_service --check-percentile", "seconds": seconds, "runs": {}}
    for mode in ("plain", "traced"):
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--percentile-child", mode, str(seconds)],
                              cwd=ROOT, capture_output=True, text=True, timeout=seconds * 3 + 120)
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        first, last = rows[1], rows[-1]  # from the second sample: the first calls settle numpy's caches
        calls = max(1, last["calls"] - first["calls"])
        summary = {"calls": calls, "allocated_blocks_diff": last["allocated_blocks"] - first["allocated_blocks"],
                   "rss_diff_bytes": last["rss_bytes"] - first["rss_bytes"]}
        if mode == "traced":
            summary.update(traced_diff_bytes=last["traced_bytes"] - first["traced_bytes"],
                           site_blocks_diff=last["site_blocks"] - first["site_blocks"],
                           site_bytes_diff=last["site_bytes"] - first["site_bytes"],
                           site_bytes_per_call=round((last["site_bytes"] - first["site_bytes"]) / calls, 3))
        summary["bytes_per_call_rss"] = round(summary["rss_diff_bytes"] / calls, 3)
        result["runs"][mode] = {"summary": summary, "samples": rows, "returncode": proc.returncode}
        print(f"{mode:6}: {calls} calls from a second thread: " + ", ".join(f"{k} {v}" for k, v in summary.items()
                                                                          if k != "calls"), flush=True)
    result["machine"] = versions()
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=1)
    print(f"wrote {out}")
    return 0


# ---- the report ------------------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    """RSS (and in-process the traced heap) against frames per camera, as the change from the value
    at warm-up, from the first frames on (the start-up ramp to the first sample is off the scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = result["samples"]["rows"], result["samples"]["columns"]
    n, warm = result["cameras"], result["warmup_frames_per_camera"]
    col = {c: i for i, c in enumerate(cols)}
    rows = [r for r in rows if r[col["frames_total"]] >= 0.25 * warm * n]
    frames = np.array([r[col["frames_total"]] for r in rows]) / n
    heap = "traced" in col
    r = result["measured"]["rss"]
    base = r.get("at_warmup_bytes", 0)
    fig, axes = plt.subplots(2 if heap else 1, 1, figsize=(9, 6.5 if heap else 4), sharex=True, squeeze=False)
    ax = axes[0][0]
    rss_key = "vmrss" if "vmrss" in col else "rss"
    ax.plot(frames, (np.array([x[col[rss_key]] for x in rows]) - base) / MB, lw=1,
            label="VmRSS" if not heap else "RSS (tracemalloc's own memory in it)")
    ax.axvline(warm, color="grey", ls="--", lw=1, label=f"end of warm-up ({warm} frames per camera)")
    ax.axhline(2.0, color="red", ls=":", lw=1, label="target: drift under 2 MB")
    ax.set_ylabel(f"RSS - {base / MB:.2f} MB (MB)")
    ax.set_ylim(-1.0, 2.5)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{result['title']}: RSS drift {r.get('drift_bytes', 0) / MB:+.3f} MB, robust "
                 f"{r.get('robust_drift_bytes', 0) / MB:+.3f} MB, slope {r.get('slope_bytes_per_frame', 0):+.2f} B/frame",
                 fontsize=9)
    if heap:
        h = result["measured"]["heap"]
        ax2 = axes[1][0]
        traced = np.array([x[col["traced"]] for x in rows])
        ax2.plot(frames, (traced - h.get("traced_at_warmup_bytes", 0)) / 1024, lw=1, color="C2",
                 label="traced by tracemalloc, minus the value at warm-up")
        if "traced_before_gc" in col:
            ax2.plot(frames, (np.array([x[col["traced_before_gc"]] for x in rows]) - h.get("traced_at_warmup_bytes", 0))
                     / 1024, lw=0.7, color="C1", alpha=0.6, label="the same before its gc.collect()")
        ax2.axvline(warm, color="grey", ls="--", lw=1)
        ax2.axhline(0, color="black", lw=0.5)
        ax2.set_title(f"heap: net {h.get('net_growth_bytes', 0):+,} B, robust {h.get('robust_net_growth_bytes', 0):+,} B, "
                      f"trend {h.get('trend_bytes_per_frame', 0):+.3f} B/frame", fontsize=9)
        ax2.set_ylabel("KB")
        ax2.legend(loc="upper left", fontsize=8)
    axes[-1][0].set_xlabel("frames per camera")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_checks(result: dict) -> list[dict]:
    """Whether the run exercised what it claims: every camera its frames, events on every camera,
    tracks in the detections, and the broker delivering what the run says it published."""
    m, got = result["measured"], result["mqtt_received"]
    target = result["frames_per_camera_target"]
    checks = [
        ("every camera processed its frames", min(m["frames_per_camera"].values()) >= target,
         m["frames_per_camera"]),
        ("zone/line events on every camera", all(sum(e.values()) > 0 for e in m["events_per_camera"].values()),
         m["events_total"]),
        ("tracked detections on every camera", all(v > 0 for v in m["tracked_detections_per_camera"].values()),
         sum(m["tracked_detections_per_camera"].values())),
        ("MQTT event messages received = published", got.get("by_kind", {}).get("events", 0)
         == m["mqtt_event_messages_reported"] > 0,
         f"{got.get('by_kind', {}).get('events', 0)} received, {m['mqtt_event_messages_reported']} published"),
        ("MQTT messages received = published", got.get("total", 0) == m["mqtt_messages_reported"] > 0,
         f"{got.get('total', 0)} received, {m['mqtt_messages_reported']} published"),
    ]
    if "stderr_error_lines" in m:  # the subprocess's stderr (in-process, the lines go to this one's)
        checks.append(("no error or warning lines from edge run", not m["stderr_error_lines"],
                       len(m["stderr_error_lines"])))
    return [{"check": c, "ok": bool(ok), "value": value if isinstance(value, (int, str)) else json.dumps(value)}
            for c, ok, value in checks]


def default_out(args) -> Path:
    name = "soak_service" + ("" if args.cameras == 4 else f"_{args.cameras}cam")
    if args.form == "config" and args.cameras == 1:
        name += "_config"
    if args.in_process:
        name += "_inprocess"
    if args.source == "traffic":
        name += "_traffic"
    return RESULTS / f"{name}.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=4, help="cameras (default 4)")
    parser.add_argument("--frames", type=int, default=20_000, help="frames per camera (default 20,000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="warm-up frames per camera (default 2,000)")
    parser.add_argument("--source", choices=("synthetic", "traffic"), default="synthetic",
                        help="synthetic + the bundled demo model (default), or the traffic video + COCO SSD")
    parser.add_argument("--form", choices=("single", "config"), default="single",
                        help="with --cameras 1: the single-camera command (default) or a cameras file of one")
    parser.add_argument("--margin", type=int, default=500,
                        help="with several cameras: --max-frames is N x (frames + margin), a cap (default 500); "
                             "the run is stopped (SIGTERM) once every camera has its frames")
    parser.add_argument("--threads", type=int, default=1, help="edge run --threads (default 1)")
    parser.add_argument("--detectors", type=int, default=1,
                        help="edge run --detectors K with --config (default 1; not with --in-process)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between /proc samples (default 2)")
    parser.add_argument("--cap", type=float, default=3300.0,
                        help="edge run --duration: a safety cap in seconds (default 3300)")
    parser.add_argument("--in-process", action="store_true", help="build the pipeline here, with tracemalloc")
    parser.add_argument("--trace-frames", type=int, default=1, help="tracemalloc frames per trace (default 1)")
    parser.add_argument("--trace-every", type=int, default=100, help="frames between traced-memory samples (100)")
    parser.add_argument("--no-sample-gc", action="store_true",
                        help="--in-process: no gc.collect() before each traced-memory sample (the default collects, "
                             "so the trend is of reachable memory)")
    parser.add_argument("--top", type=int, default=10, help="growth sites listed (default 10)")
    parser.add_argument("--keep", type=Path, help="keep the work files (JSON lines, logs, zones) in this folder")
    parser.add_argument("--out", type=Path, help="result JSON (default: benchmarks/results/soak_service*.json)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--replot", type=Path, metavar="JSON", help="only redraw the .png of a result")
    parser.add_argument("--check-percentile", type=float, metavar="SECONDS",
                        help="only check the in-process runs' top growth site alone (StageTimes.percentiles on a "
                             "second thread), with and without tracemalloc, for SECONDS each")
    parser.add_argument("--percentile-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--subscriber", nargs=2, metavar=("PORT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        return subscriber_child(int(args.subscriber[0]), Path(args.subscriber[1]))
    if args.percentile_child:
        return percentile_child(args.percentile_child[0], float(args.percentile_child[1]))
    if args.check_percentile:
        return check_percentile(args.check_percentile, args.out or RESULTS / "soak_service_percentile_check.json")
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return 0
    if args.source == "traffic" and not (COCO_MODEL.exists() and TRAFFIC_VIDEO.exists()):
        raise SystemExit(f"--source traffic needs {COCO_MODEL} and {TRAFFIC_VIDEO}")
    if args.cameras > 1:
        args.form = "config"
    if args.detectors > 1 and (args.in_process or args.form != "config"):
        raise SystemExit("--detectors runs edge run --config --detectors K: give --cameras 2 or more, without "
                         "--in-process")
    # --max-frames counts all cameras together and the shares can differ by tens of frames under load
    # (a capture thread not ready in its turn): a cap with a margin, and a SIGTERM (in-process: a
    # loop.stop()) once every camera has its frames.
    args.max_frames_total = args.cameras * args.frames + (args.cameras * args.margin if args.cameras > 1 else 0)
    out = args.out or default_out(args)

    load_start = os.getloadavg()
    info = versions()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        folder_ctx = None
        folder = args.keep
    else:
        folder_ctx = tempfile.TemporaryDirectory(prefix="soak_service_")
        folder = Path(folder_ctx.name)
    broker = Broker(folder).start()
    sub = None
    try:
        sub = Subscriber(broker.port, folder)
        names, argv, setup = write_setup(folder, args, broker.url)
        print(f"mosquitto on 127.0.0.1:{broker.port}; subscriber up; {args.cameras} camera(s) x {args.frames} "
              f"frames, warm-up {args.warmup}; load {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
              flush=True)
        if args.in_process:
            measured = run_in_process(args, folder, names, argv)
        else:
            measured = summarise_subprocess(args, run_subprocess(args, folder, names, argv), names)
        mqtt_counts = sub.stop()
        sub = None
        mosquitto_log = broker.log.read_text(errors="replace").splitlines()[-10:]
    finally:
        if sub is not None:
            sub.stop(settle=0)
        broker.stop()
    load_end = os.getloadavg()

    source = ("demo_ssd_int8.tflite (bundled) on synthetic cameras " + ", ".join(c["source"] for c in setup["cameras"])
              if args.source == "synthetic" else
              f"{COCO_MODEL.name} on {TRAFFIC_VIDEO.name} (20 frames, looped)")
    title = (f"{args.cameras} camera{'s' if args.cameras > 1 else ''} x {args.frames} frames, "
             f"{'in-process + tracemalloc' if args.in_process else 'edge run subprocess'}, {args.source}")
    result = {
        "benchmark": "soak_service", "title": title,
        "mode": "in-process (edge.commands.run helpers + tracemalloc)" if args.in_process else "edge run subprocess",
        "command": "benchmarks/soak_service.py " + " ".join(sys.argv[1:]),
        "edge_run_argv": ["edge", *[a.replace(str(folder), "WORK") for a in argv]],
        "form": setup["form"], "cameras": args.cameras, "frames_per_camera_target": args.frames,
        "warmup_frames_per_camera": args.warmup, "max_frames_total": args.max_frames_total, "threads": args.threads,
        "detectors": args.detectors, "source": source,
        "sample_every_s": None if args.in_process else args.every,
        "setup": {"cameras": [{**c, "zones": c["zones"]} for c in setup["cameras"]], "zones": setup["zones"]},
        "measured": measured,
        "mqtt_received": mqtt_counts,
        "mosquitto_log_tail": mosquitto_log,
        "load_average": {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in load_end]},
        "niceness": os.nice(0),
        "machine": info,
    }
    result["targets"] = soak_verdicts(result)
    result["checks"] = run_checks(result)
    samples = measured.pop("samples")
    result["samples"] = samples
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result, indent=1)
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))

    # ---- the printout
    m = measured
    r = m["rss"]
    print(f"{title}: {m['stop_reason']}, frames per camera {m['frames_per_camera']}")
    print(f"  fps {m['fps_reported']} (all cameras, reported by the run), {m['fps_after_warmup_measured']} after "
          f"warm-up (measured); wall {m['wall_s']} s")
    if "drift_bytes" in r:
        print(f"  RSS at warm-up {r['at_warmup_bytes'] / MB:.2f} MB (at {r['first_sample_frames']} frames in all), "
              f"last {r['last_bytes'] / MB:.2f} MB: drift {r['drift_bytes'] / MB:+.3f} MB, robust "
              f"{r['robust_drift_bytes'] / MB:+.3f} MB, slope {r['slope_bytes_per_frame']:+.3f} B/frame, peak "
              f"{r['peak_sampled_bytes'] / MB:.2f} MB sampled"
              + (f", VmHWM {r['vmhwm_bytes'] / MB:.2f} MB" if r.get("vmhwm_bytes") else ""))
    if "heap" in m and "net_growth_bytes" in m["heap"]:
        h = m["heap"]
        print(f"  heap: traced {h['traced_at_warmup_bytes'] / MB:.3f} MB at warm-up, {h['traced_at_end_bytes'] / MB:.3f} "
              f"MB at end: net {h['net_growth_bytes']:+,} B ({h['net_growth_bytes_per_frame']:+.3f} B/frame), robust "
              f"{h['robust_net_growth_bytes']:+,} B ({h['robust_net_growth_bytes_per_frame']:+.3f} B/frame), trend "
              f"{h['trend_bytes_per_frame']:+.4f} B/frame; snapshot diff {h['snapshot_diff_sum_bytes']:+,} B "
              f"({h['snapshot_diff_sum_unfiltered_bytes']:+,} B with tracemalloc's own lines)")
        for s in h["top_growth_sites"][:5]:
            print(f"    +{s['size_diff_bytes']:,} B ({s['count_diff']:+d} blocks) {s['file']}:{s['line']}")
    print(f"  events (JSON lines) {m['events_total']}: " + "; ".join(
        f"{k} {v}" for k, v in m["events_per_camera"].items()))
    print(f"  MQTT received {mqtt_counts.get('total')} messages {mqtt_counts.get('by_kind')}; event types "
          f"{mqtt_counts.get('event_types')}; the run reported {m['mqtt_event_messages_reported']} event messages, "
          f"{m['mqtt_messages_reported']} in all")
    print(f"  load {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    print(format_soak_targets(result))
    for c in result["checks"]:
        print(f"  {'ok' if c['ok'] else 'FAILED':6} check: {c['check']} ({c['value']})")
    print(f"wrote {out}")
    return 0 if all(t["met"] is not False for t in result["targets"]) and all(c["ok"] for c in result["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
