"""The local runner: worker processes on this machine (`python -m server.worker`), started ahead of their jobs.

Each worker imports torch before its job comes (seconds saved per job), runs one job and exits, so one job's
state (or code) never reaches the next. Each runs in its own process group under a memory limit, and dies with
the server (PR_SET_PDEATHSIG): a crash, an out-of-memory kill or a segfault fails its job, never the server.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

from server.config import ServerConfig
from server.worker.protocol import MAX_LINE, WORKER_LOG

__all__ = ["LocalExecution", "LocalRunner"]

_MAX_LOG_BYTES = 16 << 20  # worker.log is cut beyond this
_MIN_MEMORY_MB = 1024  # the default memory limit of a worker is RAM / workers, but not below this


class LocalRunner:
    """`config.workers` worker processes ready at any time (one spare per running job, started as it starts).

    Args:
        config: the server's settings (workers, worker_memory_mb).
    """

    def __init__(self, config: ServerConfig) -> None:
        total_mb = psutil.virtual_memory().total // 2**20
        self.memory_mb = config.worker_memory_mb or max(_MIN_MEMORY_MB, total_mb // config.workers)
        self._workers = config.workers
        self._threads = max(1, (os.cpu_count() or 1) // config.workers)
        self._spares: list[subprocess.Popen] = []

    def start(self) -> None:
        self._spares = [self._spawn() for _ in range(self._workers)]

    def launch(self, folder: Path) -> LocalExecution:
        process = self._spares.pop(0) if self._spares else self._spawn()
        self._spares.append(self._spawn())  # the next job's worker imports while this one runs
        try:
            process.stdin.write(f"{folder}\n".encode())
            process.stdin.close()
        except OSError:  # the worker died before its job came: its execution ends at once (see worker.log)
            pass
        return LocalExecution(process, folder, self.memory_mb)

    def stop(self) -> None:
        spares, self._spares = self._spares, []
        for process in spares:
            _kill(process)
        for process in spares:
            process.wait()

    def _spawn(self) -> subprocess.Popen:
        env = dict(os.environ, CONVERT_WORKER_THREADS=str(self._threads), OMP_NUM_THREADS=str(self._threads))
        # The factories on the allowlist are imported in the worker, as the server's folder would see them.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
        return subprocess.Popen(
            [sys.executable, "-m", "server.worker", str(self.memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a kill reaches anything it started
        )


class LocalExecution:
    """A worker process running one job: its stdout carries the event lines, its stderr goes to worker.log."""

    def __init__(self, process: subprocess.Popen, folder: Path, memory_mb: int) -> None:
        self._process, self._folder, self._memory_mb = process, folder, memory_mb

    def lines(self) -> Iterator[bytes]:
        stdout, stderr = self._process.stdout.fileno(), self._process.stderr.fileno()
        buffer, open_fds = bytearray(), {stdout, stderr}
        with open(self._folder / WORKER_LOG, "wb") as log:
            while open_fds:
                ready, _, _ = select.select(list(open_fds), [], [])
                for fd in ready:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        open_fds.discard(fd)
                    elif fd == stderr:
                        if log.tell() < _MAX_LOG_BYTES:
                            log.write(data)
                    else:
                        buffer += data
                        yield from _complete_lines(buffer)
        if buffer:  # a last line without its newline
            yield bytes(buffer[: MAX_LINE + 1])

    def kill(self) -> None:
        _kill(self._process)

    def wait(self) -> str | None:
        code = self._process.wait()
        if code == 0:
            return None
        if code < 0:
            name = signal.Signals(-code).name
            if -code == signal.SIGKILL:
                return (
                    f"the worker process was killed ({name}), most likely by the kernel for want of memory: convert a "
                    "smaller model or input, or ask the operator for more memory (--worker-memory-mb, now "
                    f"{self._memory_mb})"
                )
            return f"the worker process crashed ({name}) while converting: see the job's {WORKER_LOG} on the server"
        return f"the worker process exited with status {code}: see the job's {WORKER_LOG} on the server"


def _complete_lines(buffer: bytearray) -> Iterator[bytes]:
    """Take each complete line out of `buffer`; a line longer than MAX_LINE is cut there (the cut is invalid)."""
    while True:
        end = buffer.find(b"\n")
        if end < 0 and len(buffer) <= MAX_LINE:
            return
        if end < 0 or end > MAX_LINE:
            line, rest = bytes(buffer[: MAX_LINE + 1]), buffer[MAX_LINE + 1 :]
        else:
            line, rest = bytes(buffer[:end]), buffer[end + 1 :]
        buffer[:] = rest
        yield line


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
