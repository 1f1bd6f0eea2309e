"""The worker pool: queued jobs run one per worker process (server/worker.py), `workers` at a time.

A crash, an out-of-memory kill or a segfault in a worker fails its job, never the server. Each job has a time
limit; cancelling a running job kills its worker. Workers are started ahead of time, so that a job does not
wait for torch to import; each runs one job and exits, so one job's state (or code) never reaches the next.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import psutil

from server import wire
from server.config import ServerConfig
from server.events import EventHub
from server.rpc import converter_pb2 as pb
from server.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from server.worker.main import OUT_DIR

logger = logging.getLogger(__name__)

WORKER_LOG = "worker.log"  # the worker's stderr, in the job's folder
_MAX_EVENT_LINE = 1 << 20  # bytes; a longer line from a worker is cut (the worker may run untrusted code)
_MAX_LOG_BYTES = 16 << 20  # worker.log is cut beyond this
_MAX_REPORT_BYTES = 64 << 20
_MAX_MESSAGE = 4000  # characters of a worker's failure message kept
_FAILURES = {"BAD_INPUT", "PARITY", "WORKER"}


@dataclasses.dataclass
class _Run:
    """A job and the worker process running it."""

    job_id: str
    process: subprocess.Popen
    deadline: float  # time.monotonic() after which the worker is killed
    stop_reason: str | None = None  # "cancelled" | "time limit" | "shutdown" once the server kills the worker


class WorkerPool:
    """Runs queued jobs in worker processes and records their progress and outcome."""

    def __init__(self, config: ServerConfig, store: JobStore, hub: EventHub, jobs_dir: Path) -> None:
        self._config, self._store, self._hub, self._jobs_dir = config, store, hub, jobs_dir
        total_mb = psutil.virtual_memory().total // 2**20
        self.memory_mb = config.worker_memory_mb or max(1024, total_mb // config.workers)
        self._threads = max(1, (os.cpu_count() or 1) // config.workers)
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._running: dict[str, _Run] = {}
        self._spares: list[subprocess.Popen] = []
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    def start(self) -> None:
        """Start the workers, and queue the jobs that were waiting when the server last stopped."""
        with self._cond:
            self._queue.extend(self._store.queued())
        self._dispatcher.start()

    def enqueue(self, job_id: str) -> None:
        with self._cond:
            self._queue.append(job_id)
            self._cond.notify_all()

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job. Returns False when it is neither (finished, or unknown)."""
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._finish(job_id, CANCELLED, "cancelled by a client before it ran", "", only_from=(QUEUED,))
                return True
            run = self._running.get(job_id)
            if run is None:
                return False
            run.stop_reason = run.stop_reason or "cancelled"
        _kill(run.process)
        self._wait_finished(job_id)
        return True

    def stop(self, grace: float) -> None:
        """Take no more jobs; give running ones `grace` seconds, then kill them (they are marked FAILED).
        Queued jobs stay queued in the store and run after a restart."""
        with self._cond:
            self._stopping = True
            spares, self._spares = self._spares, []
            self._cond.notify_all()
        for process in spares:
            _kill(process)
        deadline = time.monotonic() + grace
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            runs = list(self._running.values())
            for run in runs:
                run.stop_reason = run.stop_reason or "shutdown"
        for run in runs:
            _kill(run.process)
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=30)
        for process in spares:
            process.wait()

    # --- internals ---------------------------------------------------------------------------------------------

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

    def _dispatch(self) -> None:
        # Every worker is started by this thread, which lives until the last of them has exited: a worker dies
        # with the thread that started it (PR_SET_PDEATHSIG follows the parent thread, not the process).
        with self._cond:
            self._spares = [self._spawn() for _ in range(self._config.workers)]
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or (self._queue and len(self._running) < self._config.workers)
                )
                if self._stopping:
                    self._cond.wait_for(lambda: not self._running)
                    return
                job_id = self._queue.popleft()
                if not self._store.update(
                    job_id, only_from=(QUEUED,), state=RUNNING, stage="starting", started=time.time()
                ):
                    continue  # cancelled meanwhile
                process = self._spares.pop(0) if self._spares else self._spawn()
                self._spares.append(self._spawn())  # the next job's worker imports while this one runs
                run = _Run(job_id, process, time.monotonic() + self._config.job_time_limit)
                self._running[job_id] = run
            self._hub.publish(pb.JobEvent(job_id=job_id, state=pb.RUNNING, stage="starting", time=time.time()))
            threading.Thread(target=self._supervise, args=(run,), name=f"job-{job_id[:8]}", daemon=True).start()

    def _supervise(self, run: _Run) -> None:
        """Hand the job to its worker, relay its events until it exits, and record the outcome."""
        folder = self._jobs_dir / run.job_id
        process = run.process
        outcome: dict[str, Any] | None = None
        try:
            process.stdin.write(f"{folder}\n".encode())
            process.stdin.close()
        except OSError:  # the worker died before its job came (see worker.log)
            pass
        streams = {process.stdout.fileno(): bytearray(), process.stderr.fileno(): None}
        with open(folder / WORKER_LOG, "wb") as log:
            while streams:
                if run.stop_reason is None and time.monotonic() > run.deadline:
                    run.stop_reason = "time limit"
                    _kill(process)
                ready, _, _ = select.select(list(streams), [], [], 0.5)
                for fd in ready:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        del streams[fd]
                    elif streams[fd] is None:
                        if log.tell() < _MAX_LOG_BYTES:
                            log.write(data)
                    else:
                        outcome = self._relay(run.job_id, streams[fd], data) or outcome
        process.wait()
        self._record_outcome(run, folder, outcome)
        with self._cond:
            self._running.pop(run.job_id, None)
            self._cond.notify_all()

    def _relay(self, job_id: str, buffer: bytearray, data: bytes) -> dict[str, Any] | None:
        """Parse complete JSON lines from a worker; publish progress and log lines; return a final event."""
        buffer += data
        outcome = None
        while b"\n" in buffer or len(buffer) > _MAX_EVENT_LINE:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            try:
                event = json.loads(line[:_MAX_EVENT_LINE])
            except ValueError:
                continue
            kind = event.get("event") if isinstance(event, dict) else None
            if kind == "progress":
                stage, fraction = str(event.get("stage", ""))[:200], float(event.get("progress", 0.0))
                self._store.update(job_id, stage=stage, progress=fraction)
                self._hub.publish(
                    pb.JobEvent(job_id=job_id, state=pb.RUNNING, stage=stage, progress=fraction, time=time.time())
                )
            elif kind == "log":
                self._hub.publish(
                    pb.JobEvent(
                        job_id=job_id, state=pb.RUNNING, log=str(event.get("line", ""))[:_MAX_MESSAGE], time=time.time()
                    )
                )
            elif kind in ("succeeded", "failed"):
                outcome = event
        return outcome

    def _record_outcome(self, run: _Run, folder: Path, outcome: dict[str, Any] | None) -> None:
        job_id, code = run.job_id, run.process.returncode
        limit = self._config.job_time_limit
        if run.stop_reason == "cancelled":
            self._finish(job_id, CANCELLED, "cancelled by a client while it ran", "")
        elif run.stop_reason == "time limit":
            self._finish(
                job_id,
                FAILED,
                f"the job ran past the server's time limit of {limit:g} s and was stopped: convert a smaller model or "
                "input, or ask the operator for a longer --job-time-limit",
                "WORKER",
            )
        elif run.stop_reason == "shutdown":
            self._finish(job_id, FAILED, "the server shut down while the job ran: submit it again", "WORKER")
        elif outcome is not None and outcome["event"] == "succeeded" and code == 0:
            try:
                artifacts = list_artifacts(folder / OUT_DIR)
                report = _read_report(folder / OUT_DIR / "report.json")
            except (OSError, ValueError) as e:
                self._finish(job_id, FAILED, f"the worker's results are unreadable ({e})", "WORKER")
            else:
                self._finish(job_id, SUCCEEDED, "", "", report=report, artifacts=artifacts, progress=1.0, stage="done")
        elif outcome is not None and outcome["event"] == "failed":
            failure = outcome.get("failure") if outcome.get("failure") in _FAILURES else "WORKER"
            self._finish(job_id, FAILED, str(outcome.get("message", ""))[:_MAX_MESSAGE], failure)
        else:
            self._finish(job_id, FAILED, _crash_message(code, self.memory_mb), "WORKER")
        _remove_upload(folder)

    def _finish(
        self,
        job_id: str,
        state: str,
        message: str,
        failure: str,
        only_from: tuple[str, ...] = (RUNNING,),
        **fields: Any,
    ) -> None:
        if not self._store.update(
            job_id, only_from=only_from, state=state, message=message, failure=failure, finished=time.time(), **fields
        ):
            return
        self._hub.publish(wire.job_event(self._store.get(job_id)))

    def _wait_finished(self, job_id: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: job_id not in self._running, timeout=30)


def list_artifacts(folder: Path) -> list[dict[str, Any]]:
    """Name, size and sha256 of each regular file in `folder` (links are skipped: never served)."""
    artifacts = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False):
            digest = hashlib.sha256()
            with open(entry.path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            artifacts.append({"name": entry.name, "size_bytes": entry.stat().st_size, "sha256": digest.hexdigest()})
    return artifacts


def _read_report(path: Path) -> str:
    if path.is_symlink() or path.stat().st_size > _MAX_REPORT_BYTES:
        raise ValueError("report.json is not a plain file of a sensible size")
    text = path.read_text()
    json.loads(text)  # must be JSON
    return text


def _crash_message(code: int, memory_mb: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return (
                f"the worker process was killed ({name}), most likely by the kernel for want of memory: convert a "
                f"smaller model or input, or ask the operator for more memory (--worker-memory-mb, now {memory_mb})"
            )
        return f"the worker process crashed ({name}) while converting: see the job's {WORKER_LOG} on the server"
    return f"the worker process exited with status {code} without a result: see the job's {WORKER_LOG} on the server"


def _remove_upload(folder: Path) -> None:
    """The uploaded model or weights, and any data files, are not needed once the job has finished."""
    for path in folder.glob("upload*"):
        path.unlink(missing_ok=True)


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
