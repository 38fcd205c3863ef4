"""Which machines train together, and which one this is: ``--cluster``/``--task-index`` or ``TF_CONFIG``.

``edge train --cluster host0:port,host1:port --task-index I`` (or a ``TF_CONFIG`` environment
variable) makes this process worker ``I`` of the cluster; task 0 (or TF_CONFIG's ``chief``) is the
chief. :func:`resolve_cluster` reads either into a :class:`Cluster`, checked up front: addresses,
duplicates, the index; :func:`check_port_free` and :func:`check_worker_timeout` refuse a taken port
and a too short ``--worker-timeout`` before any work.

Pure Python: parsing imports no TensorFlow (:mod:`convert.distributed` makes the strategy).
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass

from edge.errors import EdgeError

DEFAULT_WORKER_TIMEOUT = 60  # seconds: heartbeats, joining at start, the shutdown barrier
MIN_WORKER_TIMEOUT = 5  # heartbeats are sent every timeout / 2; shorter invites false alarms under load
JOBS = ("chief", "worker")  # the task types that train; TF_CONFIG's chief (if any) comes first


@dataclass(frozen=True)
class Cluster:
    """The training tasks (``{"chief": [...], "worker": [...]}`` as TF_CONFIG has it) and which one this is."""

    jobs: dict  # job name -> list of "host:port", in task order
    task_type: str  # "worker" or "chief"
    task_index: int
    source: str  # "--cluster" or "TF_CONFIG": for messages

    @property
    def addresses(self) -> list[str]:
        """Every task's address in worker-id order (the chief, if a separate job, first)."""
        return [a for job in JOBS for a in self.jobs.get(job, [])]

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def worker_id(self) -> int:
        """0 for the chief, then 1, 2, ... (TensorFlow's id in cluster)."""
        return self.addresses.index(self.address)

    @property
    def address(self) -> str:
        return self.jobs[self.task_type][self.task_index]

    @property
    def is_chief(self) -> bool:
        return self.worker_id == 0

    def tf_config(self) -> dict:
        return {"cluster": {k: list(v) for k, v in self.jobs.items()},
                "task": {"type": self.task_type, "index": self.task_index}}


_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _check_address(address: str, where: str) -> str:
    address = address.strip()
    match = _ADDRESS.match(address)
    if not match or not 1 <= int(match.group(2)) <= 65535:
        raise EdgeError(f"{where}: {address!r} is not host:port (e.g. 10.0.0.5:12345, [::1]:12345)")
    return address


def _check_jobs(jobs: dict, where: str) -> None:
    seen: set[str] = set()
    for job in jobs:
        for address in jobs[job]:
            if address in seen:
                raise EdgeError(f"{where}: {address} is listed twice; each worker needs its own host:port")
            seen.add(address)
    if len(jobs.get("chief", [])) > 1:
        raise EdgeError(f"{where}: at most one chief")
    if not seen:
        raise EdgeError(f"{where}: no workers listed")


def parse_cluster(text: str, task_index: int | None) -> Cluster:
    """``--cluster host0:port,host1:port,...`` with ``--task-index I``: task 0 is the chief."""
    if task_index is None:
        raise EdgeError("--cluster needs --task-index (0 on the chief, 1, 2, ... on the others, "
                        "in --cluster's order)")
    addresses = [_check_address(a, "--cluster") for a in text.split(",") if a.strip()]
    jobs = {"worker": addresses}
    _check_jobs(jobs, "--cluster")
    if not 0 <= task_index < len(addresses):
        raise EdgeError(f"--task-index {task_index}: --cluster lists {len(addresses)} worker(s), "
                        f"so 0..{len(addresses) - 1}")
    return Cluster(jobs, "worker", int(task_index), "--cluster")


def cluster_from_tf_config(text: str) -> Cluster:
    """TensorFlow's ``TF_CONFIG``: ``{"cluster": {"worker": [...], "chief": [...]}, "task": {...}}``."""
    where = "TF_CONFIG"
    try:
        data = json.loads(text)
        cluster, task = data["cluster"], data["task"]
        task_type, index = str(task["type"]), int(task["index"])
        if not isinstance(cluster, dict):
            raise TypeError("cluster is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EdgeError(f"{where}: expected {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                        f"\"task\": {{\"type\": \"worker\", \"index\": 0}}}} ({exc})") from None
    unsupported = sorted(set(cluster) - set(JOBS))
    if unsupported or task_type not in JOBS:
        raise EdgeError(f"{where}: only 'chief' and 'worker' tasks train together "
                        f"(MultiWorkerMirroredStrategy); got {', '.join(unsupported) or task_type}")
    jobs = {}
    for job in JOBS:
        if job in cluster:
            if not isinstance(cluster[job], list):
                raise EdgeError(f"{where}: cluster.{job} must be a list of host:port")
            jobs[job] = [_check_address(str(a), f"{where} cluster.{job}") for a in cluster[job]]
    _check_jobs(jobs, where)
    if not 0 <= index < len(jobs.get(task_type, [])):
        raise EdgeError(f"{where}: task {task_type} {index} is not in the cluster "
                        f"({len(jobs.get(task_type, []))} {task_type} task(s))")
    return Cluster(jobs, task_type, index, where)


def resolve_cluster(cluster: str | None, task_index: int | None, environ=None) -> Cluster | None:
    """The cluster this process belongs to (``--cluster`` wins over TF_CONFIG), or None for one machine."""
    environ = os.environ if environ is None else environ
    if cluster:
        return parse_cluster(cluster, task_index)
    if task_index is not None:
        raise EdgeError("--task-index needs --cluster (or a TF_CONFIG environment variable instead of both)")
    text = environ.get("TF_CONFIG", "").strip()
    return cluster_from_tf_config(text) if text else None


def check_port_free(cluster: Cluster) -> None:
    """This worker's port must be free: TensorFlow's own error for a taken port is a page of gRPC."""
    port = int(cluster.address.rsplit(":", 1)[1])
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((host, port))
            return
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (97, 99):  # no IPv6 here: try IPv4
                continue
            raise EdgeError(f"{cluster.source}: port {port} of this worker ({cluster.address}, task "
                            f"{cluster.task_type} {cluster.task_index}) is not free ({exc.strerror}); "
                            "stop what uses it or choose another port") from None


def check_worker_timeout(seconds: float) -> float:
    if not seconds >= MIN_WORKER_TIMEOUT:
        raise EdgeError(f"--worker-timeout {seconds}: must be at least {MIN_WORKER_TIMEOUT} seconds")
    return float(seconds)
