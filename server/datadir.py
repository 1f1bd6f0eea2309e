"""The server's data folder: its layout, the lock that keeps a second server off it, the cleanup of what a stopped
server left behind, the free-space check of a submission, and the sweeper of expired jobs.

    DATA_DIR/lock            held (flock) by the running server; a second one refuses to start
    DATA_DIR/jobs.sqlite     the job records (server.store)
    DATA_DIR/jobs/ID/        a job's folder, which its worker sees: job.json, the uploads, worker.log
    DATA_DIR/artifacts/ID/   a finished job's results, moved out of the worker's reach before they are hashed
    DATA_DIR/spares/         folders of sandboxed workers waiting for their job

Everything is created readable by the server's user only (folders 0700, files 0600).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from convert.errors import ConvertError
from server.store import FINISHED, QUEUED, JobStore
from server.worker.protocol import JOB_FILE, WORKER_LOG

__all__ = ["DataDir", "DiskFull", "Sweeper", "disk_full", "remove_work"]

logger = logging.getLogger(__name__)

_SWEEP_EVERY = 60.0  # seconds between two sweeps (at most; less for a short retention)


def disk_full(error: BaseException) -> bool:
    """Whether `error` is the file system's (or SQLite's) "no space left"."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return "database or disk is full" in str(error)


class DataDir:
    """The data folder of one running server, locked for as long as it runs.

    Args:
        root: the folder (created if missing).

    Raises:
        ConvertError: when it cannot be created or written, or another server uses it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs, self.artifacts, self.spares = root / "jobs", root / "artifacts", root / "spares"
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for folder in (self.jobs, self.artifacts, self.spares):
                folder.mkdir(mode=0o700, exist_ok=True)
            self._lock = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise ConvertError(f"cannot use {root} as the data folder ({e}): give --data-dir a writable folder") from e
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._lock, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock)
            raise ConvertError(
                f"another server (pid {holder}) uses the data folder {root}: stop it first, or give this one "
                "another --data-dir"
            ) from None
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        """Let go of the lock (the kernel does it too when the process ends, however it ends)."""
        with contextlib.suppress(OSError):
            os.close(self._lock)

    def remove_job(self, job_id: str) -> None:
        """Everything a job has on disk: its folder and its artifacts."""
        for folder in (self.jobs / job_id, self.artifacts / job_id):
            shutil.rmtree(folder, ignore_errors=True)

    def remove_orphans(self, store: JobStore) -> list[str]:
        """What a server that stopped (or was killed) left behind: folders of uploads that never became jobs,
        artifacts without a job, spares' folders, and the uploads and half-written results of finished jobs; a
        queued job whose folder is gone is failed.

        Returns:
            What was removed, one line each (for the log).
        """
        removed = []
        for folder in self.spares.iterdir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"spare folder {folder.name}")
        for parent in (self.jobs, self.artifacts):
            for folder in parent.iterdir():
                if store.get(folder.name) is None:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(f"{parent.name}/{folder.name} (no job)")
        for job_id in store.ids(FINISHED):
            removed += [f"jobs/{job_id}/{name}" for name in remove_work(self.jobs / job_id)]
        for job_id in store.ids((QUEUED,)):
            if not (self.jobs / job_id).is_dir():
                store.update(
                    job_id,
                    only_from=(QUEUED,),
                    state="FAILED",
                    failure="WORKER",
                    message="the job's uploaded files are gone from the server: submit it again",
                    finished=time.time(),
                )
                removed.append(f"job {job_id} (its folder was gone: FAILED)")
        return removed

    def free_bytes(self) -> int:
        """Free space for the server (not root's reserve) where the data folder is."""
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def check_room(self, needed: int, min_free_mb: int) -> None:
        """Refuse a submission of `needed` bytes that would leave less than `min_free_mb` MiB free.

        Raises:
            DiskFull: with the figures and what to do.
        """
        free = self.free_bytes()
        if free - needed < min_free_mb * 2**20:
            raise DiskFull(
                f"the server's disk is full: {free / 2**20:.0f} MiB free, the upload takes {needed / 2**20:.1f} MiB "
                f"and the server keeps {min_free_mb} MiB free (--min-free-mb): submit again later, or ask the "
                "operator to delete old jobs (`convert jobs delete`) or set --retention-days"
            )


def remove_work(folder: Path) -> list[str]:
    """What a finished job no longer needs: its uploads (the model or weights, any data files), and whatever its
    worker left behind but the log and the job's options (a half-written out/, staging folders).

    Returns:
        The names removed.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if entry.name in (WORKER_LOG, JOB_FILE):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            removed.append(entry.name)
    return removed


class DiskFull(Exception):
    """A submission that the server's free space cannot take."""


class Sweeper:
    """A thread that deletes finished jobs older than `retention_days` (when set) and runs `tick` (the pool's
    retry of unrecorded states), every `_SWEEP_EVERY` seconds at most.

    Args:
        store: the job records.
        data: the data folder.
        retention_days: days a finished job is kept after it finished; None: forever.
        tick: called at each sweep.
        is_active: whether a job is queued or running (never deleted).
    """

    def __init__(
        self,
        store: JobStore,
        data: DataDir,
        retention_days: float | None,
        tick: Callable[[], None],
        is_active: Callable[[str], bool],
    ) -> None:
        self._store, self._data, self._retention, self._tick, self._is_active = (
            store,
            data,
            retention_days,
            tick,
            is_active,
        )
        retention_s = None if retention_days is None else retention_days * 86400
        self._every = min(_SWEEP_EVERY, max(0.2, retention_s / 4)) if retention_s else min(_SWEEP_EVERY, 5.0)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def sweep(self) -> list[str]:
        """Delete the expired jobs now. Returns their ids."""
        if self._retention is None:
            return []
        before = time.time() - self._retention * 86400
        deleted = []
        for job_id in self._store.finished_before(before):
            if not self._is_active(job_id) and self._store.delete(job_id):
                self._data.remove_job(job_id)
                deleted.append(job_id)
        return deleted

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            try:
                self._tick()
                for job_id in self.sweep():
                    logger.info("job %s: deleted, finished more than %g days ago", job_id, self._retention)
            except Exception:  # a failed sweep (a full disk) is tried again at the next one
                logger.exception("the sweep of expired jobs failed")
