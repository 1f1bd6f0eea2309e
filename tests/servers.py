"""Run the real server (`python -m server`) on a free loopback port, for the service tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.rpc import converter_pb2 as pb

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TOKEN = "test-token"
FACTORIES = ["--allow-factory", "service_models:*"]
SERVER = (sys.executable, "-m", "server")
_SCRIPT = Path(sys.executable).with_name("convert")  # the console script, as a user runs it
CONVERT = (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "convert.cli")


def server_env() -> dict[str, str]:
    """The tests' folder importable (service_models), the repository too (server, convert)."""
    path = os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


class Server:
    """A server process and where to reach it (`health_address`: its health check's own port)."""

    def __init__(self, process: subprocess.Popen, address: str, log: Path, health_address: str | None = None) -> None:
        self.process, self.address, self.log, self.health_address = process, address, log, health_address

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def launch(command: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None) -> Server:
    """Start `command` (a server that prints `serving on HOST:PORT`) and wait for that line.

    Its output goes to a file (`server-N.log` in `cwd`), never to a pipe that nobody reads once it runs.
    """
    log = cwd / f"server-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env=env or server_env(), stdout=out, stderr=subprocess.STDOUT, text=True
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(r"serving on (\S+):(\d+)", log.read_text()):
            health_port = re.search(r"health on port (\d+)", log.read_text())
            health_address = f"127.0.0.1:{health_port.group(1)}" if health_port else None
            return Server(process, f"127.0.0.1:{match.group(2)}", log, health_address)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    process.wait()
    raise RuntimeError(f"the server did not start: {log.read_text()}")


@contextlib.contextmanager
def running_server(
    data_dir: Path, *options: str, program: Sequence[str] = SERVER, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """`python -m server --port 0 --data-dir DATA_DIR OPTIONS...` (or another `program`), in DATA_DIR's parent,
    stopped (SIGTERM, then SIGKILL) after."""
    server = launch(
        [*program, "--port", "0", "--data-dir", str(data_dir), "--grace", "1", *options], data_dir.parent, env=env
    )
    try:
        yield server
    finally:
        try:
            server.stop(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def health(address: str, timeout: float = 5) -> str:
    """The server's overall health status name (SERVING, NOT_SERVING), or UNAVAILABLE when it is not there."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def wait_for(client, job_id: str, *states: int, timeout: float = 60) -> pb.Job:
    """The job once it is in one of `states` (pb.JobState values), polled through `client` (a ConvertClient)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {pb.JobState.Name(job.state)}, not {states}: {job.message}")


def wait_for_file(path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie waiting for its parent counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
