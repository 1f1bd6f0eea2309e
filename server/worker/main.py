"""A worker process: runs one job with `convert.job.run_job`, never in the server's process.

    python -m server.worker MEMORY_MB

The server starts it ahead of time (importing torch takes seconds), then writes the job's folder on its
stdin. The worker reads `job.json` there, writes the results into `out/`, and reports on its stdout as JSON
lines, which the server parses as plain JSON (never unpickled: with --allow-untrusted-code, the code in an
uploaded model runs here, and must not reach the server through this channel either):

    {"event": "progress", "stage": "factorize", "progress": 0.42}
    {"event": "log", "line": "..."}
    {"event": "succeeded"}                      (the report is out/report.json)
    {"event": "failed", "failure": "BAD_INPUT" | "PARITY" | "WORKER", "message": "..."}

Anything else the libraries print goes to stderr, which the server sends to the job's worker.log.
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
from typing import IO, Any

JOB_FILE = "job.json"  # JobOptions.to_dict(), written by the server
OUT_DIR = "out"  # the artifacts; written atomically by run_job
_PR_SET_PDEATHSIG = 1


def main() -> int:
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints (libraries) go to the log, not into the event stream
    parent = os.getppid()
    _die_with_parent(parent)
    memory_mb = int(sys.argv[1])
    _limit_resources(memory_mb)
    warnings.filterwarnings("ignore")  # torch's tracing and export warnings: as the CLI without --verbose

    # Import everything a job needs before waiting for one: this is the slow part of a worker's start.
    import torch

    from convert.errors import ConvertError
    from convert.job import JobOptions, run_job
    from convert.runtime.export import ParityError

    threads = os.environ.get("CONVERT_WORKER_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    _send(events, event="ready")
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
            progress=lambda stage, fraction: _send(events, event="progress", stage=stage, progress=fraction),
            on_warning=lambda message: _send(events, event="log", line=f"warning: {message}"),
        )
    except ParityError as e:
        _send(events, event="failed", failure="PARITY", message=str(e))
    except ConvertError as e:
        _send(events, event="failed", failure="BAD_INPUT", message=str(e))
    except MemoryError:
        _send(
            events,
            event="failed",
            failure="WORKER",
            message=f"the job ran out of memory (the worker limit is {memory_mb} MiB): convert a smaller model or "
            "input shape, or ask the operator for a larger --worker-memory-mb",
        )
    except Exception as e:  # noqa: BLE001 - a bug, or the model's own code failing: this job fails, not the server
        traceback.print_exc()
        _send(
            events,
            event="failed",
            failure="WORKER",
            message=f"internal error: {type(e).__name__}: {e} (the traceback is in the job's worker.log on the server)",
        )
    else:
        _send(events, event="succeeded")
    return 0


def _send(stream: IO[str], **event: Any) -> None:
    stream.write(json.dumps(event) + "\n")


class _EventLog(logging.Handler):
    """Warnings logged by the libraries become log lines of the job."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.WARNING)
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        _send(self._stream, event="log", line=f"{record.levelname.lower()}: {record.getMessage()}")


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
