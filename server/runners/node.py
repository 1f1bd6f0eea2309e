"""One job on a node of a Ray cluster: the Ray task that `server.runners.ray` starts there.

It writes the job's files (from the object store, chunk by chunk) into a folder of the node, runs the same worker
process as the local runner in it (`server.runners.local.spawn_worker`: its memory limit, its process group, dead
with the task), relays the worker's event lines, then sends the folder's results back chunk by chunk: the server
writes and hashes the artifacts in its own data dir, as for a local job. Nothing is shared but the object store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import ray

from convert.artifacts import failed_parity_dir
from server.runners.local import LocalExecution, kill_group, spawn_worker
from server.worker.protocol import OUT_DIR, PLACEMENT_FILE, WORKER_LOG

__all__ = [
    "CHUNK",
    "JOBS_DIR_ENV",
    "RESULT_DIRS",
    "Chunk",
    "Ended",
    "Item",
    "Line",
    "Placed",
    "Started",
    "jobs_root",
    "run_on_node",
]

CHUNK = 4 << 20  # bytes of a file in one object of the object store, either way
JOBS_DIR_ENV = "CONVERT_RAY_JOBS_DIR"  # where a node keeps the folders of its jobs (default: TMPDIR/convert-jobs)
# What comes back from the job's folder: the results (and the folder a parity failure keeps), the worker's log.
RESULT_DIRS = (OUT_DIR, failed_parity_dir(OUT_DIR).name)
_MIN_MEMORY_MB = 1024  # a job's default memory limit is its node's RAM times its share of the CPUs, but not below


@dataclasses.dataclass(frozen=True)
class Placed:
    """The first item of every task: where it runs."""

    node: str  # the Ray node id
    host: str


@dataclasses.dataclass(frozen=True)
class Started:
    """The worker has imported torch and taken the job: a node lost from now on fails the job (before: a retry)."""


@dataclasses.dataclass(frozen=True)
class Line:
    """One event line of the worker (`server.worker.protocol`), as it wrote it."""

    data: bytes


@dataclasses.dataclass(frozen=True)
class Chunk:
    """The next bytes of a file of the job's folder, after the run (every file has at least one, maybe empty)."""

    path: str  # relative to the job's folder: out/model.pt, worker.log, ...
    data: bytes


@dataclasses.dataclass(frozen=True)
class Ended:
    """The last item: how the worker ended (`Execution.wait`: None when it exited by itself with status 0)."""

    status: str | None


Item = Placed | Started | Line | Chunk | Ended


def run_on_node(
    job_id: str,
    files: Sequence[tuple[str, list[ray.ObjectRef]]],
    threads: int,
    memory_mb: int | None,
    placement: dict[str, float],
) -> Iterator[Item]:
    """The Ray task of one job (a generator: Ray streams its items to the server as they come).

    Args:
        job_id: the server's id of the job (names its folder here).
        files: each file of the job's folder (job.json, the uploads) by name, as chunks in the object store.
        threads: the CPUs the task took: torch's threads in the worker.
        memory_mb: the worker's memory limit; None: this node's RAM times the job's share of its CPUs.
        placement: the resources the task took, for the report.
    """
    context = ray.get_runtime_context()
    node, host = context.get_node_id(), socket.gethostname()
    yield Placed(node, host)
    root = jobs_root()
    _sweep(root)
    folder = root / f"{os.getpid()}-{job_id}"
    folder.mkdir(parents=True)
    env = {"RAY_ADDRESS": context.gcs_address}  # a distillation on Ray Train joins this cluster
    if not placement.get("GPU"):
        env["CUDA_VISIBLE_DEVICES"] = ""  # a job uses a GPU only when it took one
    limit = memory_mb or max(_MIN_MEMORY_MB, psutil.virtual_memory().total // 2**20 * threads // os.cpu_count())
    process = spawn_worker(limit, threads, env)  # it imports torch while the files arrive
    try:
        for name, refs in files:
            _receive(folder / name, refs)
        record = {"runner": "ray", "host": host, "node": node, "resources": placement}
        (folder / PLACEMENT_FILE).write_text(json.dumps(record))
        _hand(process, folder)  # it reads the job once torch is imported, and answers Ready as it takes it
        execution = LocalExecution(process, folder, limit)
        started = False
        for line in execution.lines():
            if not started:  # its first line (Ready) says it took the job: the job has started
                started = True
                yield Started()
            yield Line(line)
        status = execution.wait()
        yield from _results(folder)
        yield Ended(status)
    finally:
        kill_group(process)
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def jobs_root() -> Path:
    """The folder of this node's job folders (`CONVERT_RAY_JOBS_DIR`, else TMPDIR/convert-jobs)."""
    return Path(os.environ.get(JOBS_DIR_ENV) or Path(tempfile.gettempdir()) / "convert-jobs")


def _receive(path: Path, refs: list[ray.ObjectRef]) -> None:
    """Write a file from its chunks, one chunk in memory at a time (each dropped once written)."""
    with open(path, "wb") as f:
        while refs:
            f.write(ray.get(refs.pop(0)))


def _hand(process: subprocess.Popen, folder: Path) -> None:
    """Give the worker its job, as the local runner does (a worker that died meanwhile ends its lines at once)."""
    try:
        process.stdin.write(f"{folder}\n".encode())
        process.stdin.close()
    except OSError:
        pass


def _results(folder: Path) -> Iterator[Chunk]:
    """The result files of the job's folder, chunk by chunk (plain files only: links are never followed)."""
    for name in RESULT_DIRS:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.is_file(follow_symlinks=False):
                    yield from _chunks(Path(entry.path), f"{name}/{entry.name}")
    log = folder / WORKER_LOG
    if log.is_file() and not log.is_symlink():
        yield from _chunks(log, WORKER_LOG)


def _chunks(path: Path, relative: str) -> Iterator[Chunk]:
    with open(path, "rb") as f:
        data = f.read(CHUNK)
        yield Chunk(relative, data)
        while data := f.read(CHUNK):
            yield Chunk(relative, data)


def _sweep(root: Path) -> None:
    """Remove the folders of jobs whose task is gone (killed by a cancel, or with its node's worker)."""
    if not root.is_dir():
        return
    for entry in os.scandir(root):
        pid, _, _ = entry.name.partition("-")
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)
