"""The worker pool, whatever its runner: supervision always ends in a recorded state and a free worker slot (an
exception while following a job, a store that refuses to record), a worker that dies before it takes its job
costs the job nothing, and the queue's bound holds under concurrent Submits. On a scripted runner, in-process."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.config import ServerConfig
from server.events import EventHub
from server.pool import QueueFull, WorkerPool
from server.store import JobStore
from server.worker.protocol import OUT_DIR, Ready, StageProgress, Succeeded, encode

READY, PROGRESS, SUCCEEDED = (encode(e).encode() for e in (Ready(), StageProgress("trace", 0.5), Succeeded()))


class Execution:
    """Plays `script(folder)`'s lines; `ended` is what `wait` says."""

    def __init__(self, folder: Path, script: Callable[[Path], Iterator[bytes]], ended: str | None) -> None:
        self._lines, self._ended, self.killed = script(folder), ended, threading.Event()

    def lines(self) -> Iterator[bytes]:
        return self._lines

    def kill(self) -> None:
        self.killed.set()

    def wait(self) -> str | None:
        return self._ended


class Runner:
    """Each launch takes the next (script, ended) of `scripts`."""

    def __init__(self, *scripts: tuple[Callable[[Path], Iterator[bytes]], str | None]) -> None:
        self.scripts, self.launched = list(scripts), []

    def start(self) -> None:
        pass

    def launch(self, folder: Path) -> Execution:
        execution = Execution(folder, *self.scripts.pop(0))
        self.launched.append(execution)
        return execution

    def stop(self) -> None:
        pass


def succeeds(folder: Path) -> Iterator[bytes]:
    yield READY
    (folder / OUT_DIR).mkdir()
    (folder / OUT_DIR / "report.json").write_text("{}")
    yield SUCCEEDED


def dies_before_ready(_folder: Path) -> Iterator[bytes]:
    return iter(())


def log_write_fails(_folder: Path) -> Iterator[bytes]:
    yield READY
    yield PROGRESS
    raise OSError(28, "No space left on device")  # what writing worker.log on a full disk raised


class Pool:
    """A pool on `runner` over a fresh store, with helpers to submit and wait."""

    def __init__(self, tmp_path: Path, runner: Runner, store: JobStore | None = None, **config) -> None:
        self.store = store or JobStore(tmp_path / "jobs.sqlite")
        self.jobs = tmp_path / "jobs"
        self.jobs.mkdir()
        self.pool = WorkerPool(ServerConfig(data_dir=tmp_path, **config), self.store, EventHub(), self.jobs, runner)
        self.pool.start()
        self.count = 0

    def submit(self) -> str:
        self.count += 1
        job_id = f"{self.count:032x}"
        (self.jobs / job_id).mkdir()
        self.store.create(job_id, "test", {"model": "m"})
        self.pool.enqueue(job_id)
        return job_id

    def wait(self, job_id: str, timeout: float = 20) -> object:
        deadline = time.monotonic() + timeout
        while self.store.get(job_id).state in ("QUEUED", "RUNNING") and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.store.get(job_id)


def test_an_exception_while_following_a_job_fails_it_and_frees_its_slot(tmp_path: Path) -> None:
    runner = Runner((log_write_fails, "killed"), (succeeds, None))
    pool = Pool(tmp_path, runner)
    failed, after = pool.submit(), pool.submit()
    record = pool.wait(failed)
    assert (record.state, record.failure) == ("FAILED", "WORKER")
    assert "the server failed while following the job (OSError: [Errno 28] No space left" in record.message
    assert runner.launched[0].killed.is_set()  # its worker is stopped, then reaped
    assert pool.wait(after).state == "SUCCEEDED"  # the one worker slot came back
    start = time.monotonic()
    pool.pool.stop(grace=5)
    assert time.monotonic() - start < 2  # nothing left running


def test_a_worker_that_dies_before_its_job_costs_the_job_nothing(tmp_path: Path) -> None:
    runner = Runner((dies_before_ready, "the worker process was killed (SIGKILL)"), (succeeds, None))
    pool = Pool(tmp_path, runner)
    record = pool.wait(pool.submit())
    assert record.state == "SUCCEEDED" and len(runner.launched) == 2
    pool.pool.stop(grace=1)


def test_a_job_no_worker_can_take_fails_with_why(tmp_path: Path) -> None:
    runner = Runner(*[(dies_before_ready, "the worker process exited with status 1")] * 3)
    pool = Pool(tmp_path, runner)
    record = pool.wait(pool.submit())
    assert (record.state, record.failure) == ("FAILED", "WORKER") and len(runner.launched) == 3
    assert "no worker process could take the job (the worker process exited with status 1), 3 times" in record.message
    pool.pool.stop(grace=1)


class RefusingStore(JobStore):
    """A store that refuses the first `refusals` final states, as SQLite does on a full disk."""

    refusals = 1

    def update(self, job_id: str, **fields) -> bool:
        if "finished" in fields and self.refusals:
            self.refusals -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().update(job_id, **fields)


def test_a_final_state_the_store_refuses_is_recorded_later(tmp_path: Path) -> None:
    pool = Pool(tmp_path, Runner((succeeds, None), (succeeds, None)), RefusingStore(tmp_path / "jobs.sqlite"))
    first = pool.submit()
    deadline = time.monotonic() + 20
    while pool.pool.is_active(first) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pool.pool.is_active(first)  # the slot is free although the record failed
    assert pool.store.get(first).state == "RUNNING"
    pool.pool.retry_unrecorded()  # what the server's housekeeping does now and then
    assert pool.store.get(first).state == "SUCCEEDED"
    assert pool.wait(pool.submit()).state == "SUCCEEDED"
    pool.pool.stop(grace=1)


def test_the_queue_bound_holds_under_concurrent_submits(tmp_path: Path) -> None:
    pool = Pool(tmp_path, Runner(), max_queued=1, workers=1)
    pool.pool.stop(grace=0)  # nothing runs: every reserved place stays taken
    barrier, taken, refused = threading.Barrier(6), [], []
    release = threading.Event()

    def submit() -> None:
        barrier.wait()
        try:
            with pool.pool.reservation():
                taken.append(1)
                release.wait(5)  # the upload takes a while
        except QueueFull:
            refused.append(1)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(taken) + len(refused) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join()
    assert (len(taken), len(refused)) == (1, 5)
    with pool.pool.reservation() as enqueue:  # the place given back by an upload that did not finish
        enqueue("f" * 32)
    assert pool.pool.queued() == 1
    with pytest.raises(QueueFull), pool.pool.reservation():
        pass
