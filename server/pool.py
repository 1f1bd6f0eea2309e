"""The worker pool: queued jobs run on a runner (`server.runners`), `workers` at a time, and their events and
outcomes are recorded.

Whatever the runner, the pool keeps the queue, the time limit of each job, cancelling (which stops its worker),
the validation of every event a worker sends (`server.worker.protocol`), and the record of the outcome with the
artifacts' sizes and sha256, computed here from the job's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from convert.artifacts import REPORT_JSON
from server import wire
from server.config import ServerConfig
from server.events import EventHub
from server.runners.base import Execution, Runner
from server.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from server.worker.protocol import (
    OUT_DIR,
    WORKER_LOG,
    Failed,
    LogLine,
    ProtocolError,
    StageProgress,
    Succeeded,
    decode,
)

__all__ = ["RunningJob", "WorkerPool", "list_artifacts"]

logger = logging.getLogger(__name__)

_MAX_REPORT_BYTES = 64 << 20
_STOP_WAIT = 30.0  # seconds a cancel or a shutdown waits for a killed worker's job to be recorded


@dataclasses.dataclass
class RunningJob:
    """A job that a worker has taken, and whether (and why) the server stops it."""

    job_id: str
    execution: Execution
    stop_reason: str | None = None  # "cancelled" | "time limit" | "shutdown" once the server stops the worker
    ended: bool = False  # the worker has ended: a stop that comes later changes nothing


class WorkerPool:
    """Runs queued jobs on `runner`, `config.workers` at a time, and records their progress and outcome."""

    def __init__(self, config: ServerConfig, store: JobStore, hub: EventHub, jobs_dir: Path, runner: Runner) -> None:
        self._config, self._store, self._hub, self._jobs_dir, self._runner = config, store, hub, jobs_dir, runner
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._running: dict[str, RunningJob] = {}
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    def start(self) -> None:
        """Start the runner, and queue the jobs that were waiting when the server last stopped."""
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
            job = self._running.get(job_id)
            if job is None:
                return False
        self._stop(job, "cancelled")
        with self._cond:
            self._cond.wait_for(lambda: job_id not in self._running, timeout=_STOP_WAIT)
        return True

    def stop(self, grace: float) -> None:
        """Take no more jobs; give running ones `grace` seconds, then kill them (they are marked FAILED).
        Queued jobs stay queued in the store and run after a restart."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._runner.stop()
        deadline = time.monotonic() + grace
        with self._cond:
            while self._running and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            jobs = list(self._running.values())
        for job in jobs:
            self._stop(job, "shutdown")
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=_STOP_WAIT)

    # --- internals ---------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        # The runner starts every worker from this thread, which lives until the last of them has ended: a local
        # worker dies with the thread that started it (PR_SET_PDEATHSIG follows the parent thread, not the process).
        with self._cond:
            if not self._stopping:
                self._runner.start()
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
                job = RunningJob(job_id, self._runner.launch(self._jobs_dir / job_id))
                self._running[job_id] = job
            self._hub.publish(wire.job_event(self._store.get(job_id)))
            threading.Thread(target=self._supervise, args=(job,), name=f"job-{job_id[:8]}", daemon=True).start()

    def _supervise(self, job: RunningJob) -> None:
        """Relay the job's events until its worker ends, and record the outcome."""
        limit = threading.Timer(self._config.job_time_limit, self._stop, (job, "time limit"))
        limit.start()
        outcome: Succeeded | Failed | None = None
        malformed: str | None = None  # why the last bad line was refused
        for line in job.execution.lines():
            try:
                event = decode(line)
            except ProtocolError as e:
                malformed = str(e)
                logger.warning("job %s: the worker sent a malformed event line: %s", job.job_id, e)
                continue
            if isinstance(event, StageProgress):
                self._store.update(job.job_id, stage=event.stage, progress=event.progress)
                self._hub.publish(wire.worker_event(job.job_id, event))
            elif isinstance(event, LogLine):
                self._hub.publish(wire.worker_event(job.job_id, event))
            elif isinstance(event, Succeeded | Failed):
                outcome = event
        with self._cond:
            job.ended = True
        limit.cancel()
        self._record_outcome(job, outcome, job.execution.wait(), malformed)
        with self._cond:
            self._running.pop(job.job_id, None)
            self._cond.notify_all()

    def _stop(self, job: RunningJob, reason: str) -> None:
        """Kill the job's worker, for `reason` (the first reason given is the one recorded)."""
        with self._cond:
            if job.ended:
                return
            job.stop_reason = job.stop_reason or reason
        job.execution.kill()

    def _record_outcome(
        self, job: RunningJob, outcome: Succeeded | Failed | None, ended: str | None, malformed: str | None
    ) -> None:
        job_id, folder, limit = job.job_id, self._jobs_dir / job.job_id, self._config.job_time_limit
        if job.stop_reason == "cancelled":
            self._finish(job_id, CANCELLED, "cancelled by a client while it ran", "")
        elif job.stop_reason == "time limit":
            self._finish(
                job_id,
                FAILED,
                f"the job ran past the server's time limit of {limit:g} s and was stopped: convert a smaller model or "
                "input, or ask the operator for a longer --job-time-limit",
                "WORKER",
            )
        elif job.stop_reason == "shutdown":
            self._finish(job_id, FAILED, "the server shut down while the job ran: submit it again", "WORKER")
        elif isinstance(outcome, Succeeded) and ended is None:
            try:
                artifacts = list_artifacts(folder / OUT_DIR)
                report = _read_report(folder / OUT_DIR / REPORT_JSON)
            except (OSError, ValueError) as e:
                self._finish(job_id, FAILED, f"the worker's results are unreadable ({e})", "WORKER")
            else:
                self._finish(job_id, SUCCEEDED, "", "", report=report, artifacts=artifacts, progress=1.0, stage="done")
        elif isinstance(outcome, Failed):
            self._finish(job_id, FAILED, outcome.message, outcome.failure)
        else:
            self._finish(job_id, FAILED, _no_result(ended, malformed), "WORKER")
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
        raise ValueError(f"{REPORT_JSON} is not a plain file of a sensible size")
    text = path.read_text()
    json.loads(text)  # must be JSON
    return text


def _no_result(ended: str | None, malformed: str | None) -> str:
    """Why a job whose worker ended without a valid result failed."""
    if ended is not None:
        return ended
    if malformed is not None:
        return (
            f"the worker sent a malformed event ({malformed}) and no result: see the job's {WORKER_LOG} on the server"
        )
    return f"the worker process exited without a result: see the job's {WORKER_LOG} on the server"


def _remove_upload(folder: Path) -> None:
    """The uploaded model or weights, and any data files, are not needed once the job has finished."""
    for path in folder.glob("upload*"):
        path.unlink(missing_ok=True)
