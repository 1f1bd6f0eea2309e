"""A worker process: runs one job with `convert.job.run_job`, never in the server's process.

    python -m server.worker MEMORY_MB

The server starts it ahead of time (importing torch takes seconds), then writes the job's folder on its stdin.
The worker runs the job there and reports on its stdout in the event lines of `server.worker.protocol`; anything
else the libraries print goes to stderr, which the server keeps as the job's worker.log.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import signal
import sys
import traceback
import warnings
from pathlib import Path
from typing import IO

from server.worker.protocol import (
    JOB_FILE,
    OUT_DIR,
    WORKER_LOG,
    Failed,
    LogLine,
    Ready,
    StageProgress,
    Succeeded,
    WorkerEvent,
    encode,
)

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def main() -> int:
    """Get ready, take one job from stdin, run it, report its outcome. Returns 0: the outcome is in the events."""
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (libraries) go to the log, not into the event stream
    parent = os.getppid()
    _die_with_parent(parent)
    memory_mb = int(sys.argv[1])
    _limit_resources(memory_mb)
    warnings.filterwarnings("ignore")  # torch's tracing and export warnings: as the CLI without --verbose

    # Import everything a job needs before waiting for one: this is the slow part of a worker's start.
    import torch

    from convert.errors import one_line, outcome_of
    from convert.job import JobOptions, run_job

    threads = os.environ.get("CONVERT_WORKER_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    _send(events, Ready())
    line = sys.stdin.readline()
    if not line.strip():  # the server closed our stdin: it is shutting down, no job for us
        return 0
    folder = Path(line.strip())
    os.chdir(folder)  # relative paths in the job (its upload) resolve here
    logging.basicConfig(level=logging.WARNING, handlers=[_EventLog(events)])
    try:
        options = JobOptions.from_dict(json.loads((folder / JOB_FILE).read_text()))
        run_job(
            options,
            folder / OUT_DIR,
            progress=lambda stage, fraction: _send(events, StageProgress(stage, min(max(fraction, 0.0), 1.0))),
            on_warning=lambda message: _send(events, LogLine(f"warning: {message}")),
        )
    except MemoryError:
        message = (
            f"the job ran out of memory (the worker limit is {memory_mb} MiB): convert a smaller model or input "
            "shape, or ask the operator for a larger --worker-memory-mb"
        )
        _send(events, Failed("WORKER", message))
    except Exception as e:  # noqa: BLE001 - a bug, or the model's own code failing: this job fails, not the server
        outcome = outcome_of(e)  # the mapping the CLI's exit status comes from
        message = str(e)
        if outcome.label == "internal error":
            traceback.print_exc()
            message = f"internal error: {one_line(e)} (the traceback is in the job's {WORKER_LOG} on the server)"
        _send(events, Failed(outcome.failure, message))
    else:
        _send(events, Succeeded())
    return 0


def _send(stream: IO[str], event: WorkerEvent) -> None:
    stream.write(encode(event) + "\n")


class _EventLog(logging.Handler):
    """Warnings logged by the libraries become log lines of the job."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.WARNING)
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        _send(self._stream, LogLine(f"{record.levelname.lower()}: {record.getMessage()}"))


def _limit_resources(memory_mb: int) -> None:
    """Bound what a job (and any code in an uploaded model) can take: memory, and no core dumps.

    RLIMIT_DATA rather than RLIMIT_AS: it counts heap and private writable mappings, not the address space that
    CUDA reserves without using it.
    """
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _die_with_parent(parent: int) -> None:
    """Linux: be killed when the server dies, even by SIGKILL, rather than run on as an orphan."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the server's shutdown still kills its workers
        return
    if os.getppid() != parent:  # the server died before prctl took effect
        os._exit(1)
