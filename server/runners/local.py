"""The local runner: worker processes on this machine (`python -m server.worker`), started ahead of their jobs.

Each worker imports torch before its job comes (seconds saved per job), runs one job and exits, so one job's
state (or code) never reaches the next. Each runs in its own process group under a memory limit, without the
server's token in its environment, and dies with the server (PR_SET_PDEATHSIG): a crash, an out-of-memory kill
or a segfault fails its job, never the server. With a sandbox (`server.sandbox`), each worker runs in bubblewrap
and sees a folder of its own as /job, into which its job's files are moved when the job comes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from server.config import AUTH_TOKEN_ENV, ServerConfig
from server.sandbox import INSIDE_JOB, Sandbox
from server.worker.protocol import FACTORY_PATH_ENV, MAX_LINE, WORKER_LOG

__all__ = ["LocalExecution", "LocalRunner", "default_memory_mb"]

_MAX_LOG_BYTES = 16 << 20  # worker.log is cut beyond this
_MIN_MEMORY_MB = 1024  # the default memory limit of a worker, but not below this
_SERVER_HEADROOM = 0.1  # share of the RAM (at least 1 GiB) left to the server and the system by the default limit


def default_memory_mb(workers: int) -> int:
    """A worker's memory limit when the operator gives none: the RAM less the server's headroom, shared."""
    total_mb = psutil.virtual_memory().total // 2**20
    headroom = max(1024, int(total_mb * _SERVER_HEADROOM))
    return max(_MIN_MEMORY_MB, (total_mb - headroom) // workers)


@dataclasses.dataclass
class _Spare:
    """A worker process waiting for its job, and (sandboxed) the folder it sees as /job."""

    process: subprocess.Popen
    workdir: Path | None = None


class LocalRunner:
    """`config.workers` worker processes ready at any time (one spare per running job, started as it starts).

    Args:
        config: the server's settings (workers, worker_memory_mb, data_dir).
        sandbox: run each worker in it (`server.sandbox`); None: as the server's user.
    """

    def __init__(self, config: ServerConfig, sandbox: Sandbox | None = None) -> None:
        self.memory_mb = config.worker_memory_mb or default_memory_mb(config.workers)
        self._workers = config.workers
        self._threads = max(1, (os.cpu_count() or 1) // config.workers)
        self._sandbox = sandbox
        self._spares_dir = config.data_dir / "spares"  # sandboxed spares' folders, empty until their job comes
        self._factories = os.getcwd()  # allowlisted factories are imported from the server's folder, last
        self._spares: list[_Spare] = []

    def start(self) -> None:
        self._spares = [self._spawn() for _ in range(self._workers)]

    def launch(self, folder: Path) -> LocalExecution:
        spare = self._live_spare()
        self._spares.append(self._spawn())  # the next job's worker imports while this one runs
        seen_as = folder
        try:
            if spare.workdir is not None:
                seen_as = self._move_in(folder, spare.workdir)
            spare.process.stdin.write(f"{seen_as}\n".encode())
            spare.process.stdin.close()
        except OSError:  # the worker died meanwhile: it never sends Ready, and the pool launches the job again
            _kill(spare.process)
        return LocalExecution(spare.process, folder, self.memory_mb, sandboxed=spare.workdir is not None)

    def stop(self) -> None:
        spares, self._spares = self._spares, []
        for spare in spares:
            _kill(spare.process)
        for spare in spares:
            spare.process.wait()
            if spare.workdir is not None:
                with contextlib.suppress(OSError):
                    spare.workdir.rmdir()

    def _live_spare(self) -> _Spare:
        """The first spare that still runs (one killed while it waited is reaped and replaced)."""
        while self._spares:
            spare = self._spares.pop(0)
            if spare.process.poll() is None:
                return spare
            if spare.workdir is not None:
                with contextlib.suppress(OSError):
                    spare.workdir.rmdir()
        return self._spawn()

    def _move_in(self, folder: Path, workdir: Path) -> Path:
        """Make the sandboxed spare's folder the job's: the job's files move into it, and it takes the job
        folder's name (the sandbox keeps it as /job: a bind mount follows the folder, not its name)."""
        for entry in os.scandir(folder):
            os.rename(entry.path, workdir / entry.name)
        self._sandbox.prepare(workdir)
        folder.rmdir()
        os.rename(workdir, folder)
        return INSIDE_JOB

    def _spawn(self) -> _Spare:
        env = {name: value for name, value in os.environ.items() if name != AUTH_TOKEN_ENV}
        env |= {"CONVERT_WORKER_THREADS": str(self._threads), "OMP_NUM_THREADS": str(self._threads)}
        env[FACTORY_PATH_ENV] = self._factories
        # -P: the current folder is not put first on the import path (a safetensors.py there would run instead)
        command = [sys.executable, "-P", "-m", "server.worker", str(self.memory_mb)]
        workdir = None
        if self._sandbox is not None:
            workdir = self._spares_dir / uuid.uuid4().hex
            workdir.mkdir(parents=True)
            self._sandbox.prepare(workdir)
            ours = {"CONVERT_WORKER_THREADS", "OMP_NUM_THREADS", FACTORY_PATH_ENV}
            command = self._sandbox.command(command, workdir, {name: env[name] for name in ours})
        process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: a kill reaches anything it started
        )
        return _Spare(process, workdir)


class LocalExecution:
    """A worker process running one job: its stdout carries the event lines, its stderr goes to worker.log."""

    def __init__(self, process: subprocess.Popen, folder: Path, memory_mb: int, sandboxed: bool = False) -> None:
        self._process, self._folder, self._memory_mb, self._sandboxed = process, folder, memory_mb, sandboxed

    def lines(self) -> Iterator[bytes]:
        stdout, stderr = self._process.stdout.fileno(), self._process.stderr.fileno()
        buffer, open_fds = bytearray(), {stdout, stderr}
        with _Log(self._folder / WORKER_LOG) as log:
            while open_fds:
                ready, _, _ = select.select(list(open_fds), [], [])
                for fd in ready:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        open_fds.discard(fd)
                    elif fd == stderr:
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
        if self._sandboxed and code > 128:  # bubblewrap exits 128 + N for a worker killed by signal N
            code = 128 - code
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


class _Log:
    """worker.log, written as long as it can be: a full disk or a link planted by the worker stops the log, never
    the job's supervision."""

    def __init__(self, path: Path) -> None:
        try:  # O_NOFOLLOW: a worker may have put a link there, to a file of the server's
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=0)
        except OSError:
            self._file = None

    def __enter__(self) -> _Log:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()

    def write(self, data: bytes) -> None:
        if self._file is None or self._file.tell() >= _MAX_LOG_BYTES:
            return
        try:
            self._file.write(data)
        except OSError:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


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
