"""A finished job's record: its final state and message from how its worker ended, and a succeeded job's results,
taken out of every worker's reach before their sizes and sha256 are computed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from convert.artifacts import REPORT_JSON
from server.store import CANCELLED, FAILED, SUCCEEDED
from server.worker.protocol import OUT_DIR, WORKER_LOG, Failed, Succeeded

__all__ = ["Relayed", "failure", "list_artifacts", "no_result", "stopped", "succeeded"]

_MAX_REPORT_BYTES = 64 << 20


@dataclasses.dataclass
class Relayed:
    """What the pool learnt from a job's event lines."""

    outcome: Succeeded | Failed | None = None
    malformed: str | None = None  # why the last bad line was refused
    took_job: bool = False  # the worker sent Ready: it has the job (before it, a death costs the job nothing)
    error: str | None = None  # the server failed while following the job


def failure(message: str) -> dict[str, Any]:
    """The record of a job that failed through the server or its worker, not through its own options or model."""
    return {"state": FAILED, "message": message, "failure": "WORKER"}


def stopped(reason: str, time_limit: float, start_limit: float) -> dict[str, Any]:
    """The record of a job the server stopped, for `reason` ("cancelled", "time limit", "start limit", "shutdown")."""
    if reason == "cancelled":
        return {"state": CANCELLED, "message": "cancelled by a client while it ran", "failure": ""}
    if reason == "time limit":
        return failure(
            f"the job ran past the server's time limit of {time_limit:g} s and was stopped: convert a smaller model "
            "or input, or ask the operator for a longer --job-time-limit"
        )
    if reason == "start limit":
        return failure(
            f"the server's worker did not take the job within {start_limit:g} s (the server is overloaded or "
            "its workers cannot start: see the server's log); submit it again"
        )
    return failure("the server shut down while the job ran: submit it again")


def succeeded(out: Path, results: Path) -> dict[str, Any]:
    """Move the worker's out/ folder to `results`, where no worker can reach it, and the record of its success:
    the artifacts (name, size, sha256) and report.json's text.

    Raises:
        OSError, ValueError: when the results are not a folder, or report.json is not a plain JSON file.
    """
    if not stat.S_ISDIR(os.lstat(out).st_mode):  # a link is not a folder
        raise ValueError(f"{OUT_DIR} is not a folder")
    shutil.rmtree(results, ignore_errors=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    os.rename(out, results)
    artifacts = list_artifacts(results)
    report = _read_report(results / REPORT_JSON)
    return {"state": SUCCEEDED, "message": "", "failure": "", "report": report, "artifacts": artifacts}


def list_artifacts(folder: Path) -> list[dict[str, Any]]:
    """Name, size and sha256 of each regular file in `folder` (links, hard links included, are skipped: never
    served)."""
    artifacts = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        info = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            continue
        digest, size = hashlib.sha256(), 0
        with os.fdopen(os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
        artifacts.append({"name": entry.name, "size_bytes": size, "sha256": digest.hexdigest()})
    return artifacts


def _read_report(path: Path) -> str:
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_REPORT_BYTES:
        raise ValueError(f"{REPORT_JSON} is not a plain file of a sensible size")
    text = path.read_text()
    json.loads(text)  # must be JSON
    return text


def no_result(ended: str | None, malformed: str | None, took_job: bool, launches: int) -> str:
    """Why a job whose worker ended without a valid result failed (`launches`: how often it was launched)."""
    if not took_job:
        return (
            f"no worker process could take the job ({ended or 'it exited at once'}), {launches} times: see the "
            f"job's {WORKER_LOG} on the server"
        )
    if ended is not None:
        return ended
    if malformed is not None:
        return (
            f"the worker sent a malformed event ({malformed}) and no result: see the job's {WORKER_LOG} on the server"
        )
    return f"the worker process exited without a result: see the job's {WORKER_LOG} on the server"
