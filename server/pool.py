"""The worker pool: queued jobs run on a runner (`server.runners`), `workers` at a time, and their events and
outcomes are recorded.

Whatever the runner, the pool keeps the queue (and its bound, reserved atomically at Submit), the time limit of
each job, cancelling (which stops its worker), the validation of every event a worker sends
(`server.worker.protocol`), a second launch for a job whose worker died before it took the job, and the record of
the outcome. Supervision always ends in a recorded state and a reaped worker, whatever fails on the way (a full
disk, a bug). Once the worker has ended, its out/ folder is moved out of the job's folder into the server's own
artifacts folder, and the artifacts' sizes and sha256 are computed there (`server.results`, which also words each
outcome): nothing the worker started can change them any more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from convert.errors import one_line
from convert.job import JobOptions
from server import wire
from server.config import ServerConfig
from server.datadir import remove_work
from server.events import EventHub
from server.results import Relayed, failure, no_result, stopped, succeeded
from server.runners.base import Execution, Runner
from server.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore
from server.worker.protocol import (
    OUT_DIR,
    Failed,
    LogLine,
    ProtocolError,
    Ready,
    StageProgress,
    Succeeded,
    decode,
)

__all__ = ["QueueFull", "RunningJob", "WorkerPool"]

logger = logging.getLogger(__name__)

_STOP_WAIT = 30.0  # seconds a cancel or a shutdown waits for a killed worker's job to be recorded
# Seconds a worker may take to take its job (a spare still importing torch on a loaded machine): the server's time,
# not the job's, so it is not counted in the job's time limit; past it the worker is stopped as wedged.
_START_LIMIT = 300.0
_LAUNCHES = 3  # launches of one job whose worker dies before it takes the job, before the job fails


class QueueFull(Exception):
    """No place left in the queue (`config.max_queued` jobs waiting or being uploaded)."""


@dataclasses.dataclass
class RunningJob:
    """A job that a worker has taken, and whether (and why) the server stops it."""

    job_id: str
    execution: Execution
    stop_reason: str | None = None  # "cancelled" | "time limit" | "start limit" | "shutdown" once the server stops it
    ended: bool = False  # the worker has ended: a stop that comes later changes nothing
    limit: threading.Timer | None = None  # stops the worker at the time limit

    def time_limit(self, seconds: float, stop: Callable[[RunningJob, str], None], reason: str = "time limit") -> None:
        """(Re)start the clock of the time limit: in `seconds`, `stop(self, reason)`."""
        if self.limit is not None:
            self.limit.cancel()
        self.limit = threading.Timer(seconds, stop, (self, reason))
        self.limit.daemon = True
        self.limit.start()


class WorkerPool:
    """Runs queued jobs on `runner`, `config.workers` at a time, and records their progress and outcome.

    Args:
        config: the server's settings (workers, max_queued, job_time_limit).
        store: the job records.
        hub: where job events are published (Watch streams).
        jobs_dir: the jobs' folders (`jobs_dir/ID`), which their workers see.
        runner: where jobs run.
        artifacts_dir: where each finished job's out/ goes (`artifacts_dir/ID`), which no worker sees; default
            `jobs_dir`'s sibling `artifacts`.
    """

    def __init__(
        self,
        config: ServerConfig,
        store: JobStore,
        hub: EventHub,
        jobs_dir: Path,
        runner: Runner,
        artifacts_dir: Path | None = None,
    ) -> None:
        self._config, self._store, self._hub, self._jobs_dir, self._runner = config, store, hub, jobs_dir, runner
        self._artifacts_dir = artifacts_dir or jobs_dir.parent / "artifacts"
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._reserved = 0  # places taken by Submits still uploading
        self._launches: dict[str, int] = {}  # launches so far of the jobs queued again after their worker died
        self._running: dict[str, RunningJob] = {}
        self._unrecorded: dict[str, dict[str, Any]] = {}  # final states the store refused (full disk): retried
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    def start(self) -> None:
        """Start the runner, and queue the jobs that were waiting when the server last stopped."""
        with self._cond:
            self._queue.extend(self._store.queued())
        self._dispatcher.start()

    @contextlib.contextmanager
    def reservation(self) -> Iterator[Callable[[str], None]]:
        """A place in the queue, taken at once: the block receives `enqueue(job_id)`, which puts the job in it;
        leaving the block without calling it gives the place back.

        Raises:
            QueueFull: when `config.max_queued` jobs are waiting or being uploaded.
        """
        with self._cond:
            if len(self._queue) + self._reserved >= self._config.max_queued:
                raise QueueFull
            self._reserved += 1
        placed = False

        def enqueue(job_id: str) -> None:
            nonlocal placed
            with self._cond:
                self._reserved -= 1
                placed = True
                self.enqueue(job_id)

        try:
            yield enqueue
        finally:
            if not placed:
                with self._cond:
                    self._reserved -= 1

    def enqueue(self, job_id: str) -> None:
        """Queue a job, whatever the bound (Submit takes a `reservation` first)."""
        with self._cond:
            self._queue.append(job_id)
            self._cond.notify_all()

    def admit(self, options: JobOptions) -> None:
        """Refuse a job that the runner can never run (`Runner.admit`: raises Unsatisfiable)."""
        self._runner.admit(options)

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def is_active(self, job_id: str) -> bool:
        """Whether the job is queued or running here."""
        with self._cond:
            return job_id in self._queue or job_id in self._running

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

    def retry_unrecorded(self) -> None:
        """Record the final states that the store refused before (a full disk): called now and then."""
        with self._cond:
            pending, self._unrecorded = self._unrecorded, {}
        for job_id, fields in pending.items():
            self._finish_or_keep(job_id, fields)

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
                try:
                    started = self._store.update(
                        job_id, only_from=(QUEUED,), state=RUNNING, stage="starting", started=time.time()
                    )
                except sqlite3.Error as e:  # a full disk: the job stays queued, in the store as in the queue
                    logger.error("job %s: cannot record its start (%s): it waits", job_id, e)
                    self._queue.appendleft(job_id)
                    self._cond.wait(1.0)
                    continue
                if not started:
                    continue  # cancelled (or deleted) meanwhile
                try:
                    job = RunningJob(job_id, self._runner.launch(self._jobs_dir / job_id))
                except Exception as e:  # the runner's failure fails this job, never the dispatcher
                    logger.exception("job %s: the runner could not start it", job_id)
                    self._finish_or_keep(job_id, failure(f"the server could not start a worker ({one_line(e)})"))
                    continue
                self._running[job_id] = job
            self._publish(job_id)
            threading.Thread(target=self._supervise, args=(job,), name=f"job-{job_id[:8]}", daemon=True).start()

    def _supervise(self, job: RunningJob) -> None:
        """Relay the job's events until its worker ends, reap the worker, and record the outcome, whatever fails."""
        job.time_limit(_START_LIMIT, self._stop, "start limit")  # the job's own clock starts when the worker takes it
        try:
            relayed = self._relay(job)
        except Exception as e:  # a bug or a full disk here must not leave the job RUNNING
            logger.exception("job %s: following its worker failed", job.job_id)
            relayed = Relayed(error=f"the server failed while following the job ({one_line(e)})")
            with contextlib.suppress(Exception):
                job.execution.kill()
        finally:
            job.limit.cancel()
        with self._cond:
            job.ended = True
        try:
            ended = job.execution.wait()
        except Exception as e:  # noqa: BLE001 - the worker is gone either way; say how it ended as well as we can
            ended = f"the worker ended in a way the server could not read ({one_line(e)})"
        try:
            self._record_outcome(job, relayed, ended)
        except Exception as e:  # a bug in recording: the job still gets a final state
            logger.exception("job %s: recording its outcome failed", job.job_id)
            self._finish_or_keep(job.job_id, failure(f"the server failed while recording the job ({one_line(e)})"))
        finally:
            with self._cond:
                self._running.pop(job.job_id, None)
                self._cond.notify_all()

    def _relay(self, job: RunningJob) -> Relayed:
        relayed = Relayed()
        lines = job.execution.lines()
        try:
            for line in lines:
                try:
                    event = decode(line)
                except ProtocolError as e:
                    relayed.malformed = str(e)
                    logger.warning("job %s: the worker sent a malformed event line: %s", job.job_id, e)
                    continue
                if isinstance(event, Ready):
                    relayed.took_job = True
                    job.time_limit(self._config.job_time_limit, self._stop)  # the job's own time starts now
                elif isinstance(event, StageProgress):
                    with contextlib.suppress(sqlite3.Error):  # progress is not worth failing a job for
                        self._store.update(job.job_id, stage=event.stage, progress=event.progress)
                    self._hub.publish(wire.worker_event(job.job_id, event))
                elif isinstance(event, LogLine):
                    self._hub.publish(wire.worker_event(job.job_id, event))
                elif isinstance(event, Succeeded | Failed):
                    relayed.outcome = event
        finally:
            close = getattr(lines, "close", None)  # a generator's own cleanup (the log file), even on an error
            if close is not None:
                close()
        return relayed

    def _stop(self, job: RunningJob, reason: str) -> None:
        """Kill the job's worker, for `reason` (the first reason given is the one recorded)."""
        with self._cond:
            if job.ended:
                return
            job.stop_reason = job.stop_reason or reason
        job.execution.kill()

    def _record_outcome(self, job: RunningJob, relayed: Relayed, ended: str | None) -> None:
        job_id, folder, limit = job.job_id, self._jobs_dir / job.job_id, self._config.job_time_limit
        results = self._artifacts_dir / job_id
        if job.stop_reason is None and not relayed.took_job and relayed.error is None and self._launch_again(job_id):
            return
        with self._cond:
            self._launches.pop(job_id, None)
        if job.stop_reason is not None:
            fields = stopped(job.stop_reason, limit, _START_LIMIT)
        elif relayed.error is not None:
            fields = failure(f"{relayed.error}: submit it again")
        elif isinstance(relayed.outcome, Succeeded) and ended is None:
            try:
                fields = succeeded(folder / OUT_DIR, results) | {"progress": 1.0, "stage": "done"}
            except (OSError, ValueError) as e:
                fields = failure(f"the worker's results are unreadable ({one_line(e)})")
        elif isinstance(relayed.outcome, Failed):
            fields = {"state": FAILED, "message": relayed.outcome.message, "failure": relayed.outcome.failure}
        else:
            fields = failure(no_result(ended, relayed.malformed, relayed.took_job, _LAUNCHES))
        if fields["state"] != SUCCEEDED:
            shutil.rmtree(results, ignore_errors=True)
        remove_work(folder)
        self._finish_or_keep(job_id, fields)

    def _launch_again(self, job_id: str) -> bool:
        """Queue a job again (first in line) whose worker died before it took the job; False after `_LAUNCHES`."""
        with self._cond:
            launches = self._launches.get(job_id, 1)
            if launches >= _LAUNCHES or self._stopping:
                return False
            self._launches[job_id] = launches + 1
        logger.warning("job %s: its worker died before it took the job: launching it on another", job_id)
        if not self._store.update(job_id, only_from=(RUNNING,), state=QUEUED, stage=""):
            return False
        with self._cond:
            self._queue.appendleft(job_id)
            self._cond.notify_all()
        return True

    def _finish_or_keep(self, job_id: str, fields: dict[str, Any]) -> None:
        """Record a final state; when the store refuses (a full disk), free the job's own files and keep the state
        for `retry_unrecorded`."""
        try:
            self._finish(job_id, fields["state"], fields["message"], fields["failure"], **_rest(fields))
        except sqlite3.Error as e:
            logger.error("job %s: cannot record that it is %s (%s): retrying later", job_id, fields["state"], e)
            if fields["state"] != SUCCEEDED:
                shutil.rmtree(self._artifacts_dir / job_id, ignore_errors=True)
            with self._cond:
                self._unrecorded[job_id] = fields

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
        self._publish(job_id)

    def _publish(self, job_id: str) -> None:
        record = self._store.get(job_id)
        if record is not None:
            self._hub.publish(wire.job_event(record))


def _rest(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if key not in ("state", "message", "failure")}
