"""What a worker and the server say to each other: the job's folder, and the worker's event lines as types.

The server writes the job's folder on the worker's stdin; the worker reads `job.json` there, writes its results
into `out/` and its stderr goes to `worker.log`. On its stdout it reports one JSON object a line:

    {"event": "ready"}                                          (torch imported: it can take a job)
    {"event": "progress", "stage": "factorize", "progress": 0.42}
    {"event": "log", "line": "warning: ..."}
    {"event": "succeeded"}                                      (the report is out/report.json)
    {"event": "failed", "failure": "BAD_INPUT" | "PARITY" | "WORKER", "message": "..."}

`decode` validates every field of a line and raises ProtocolError with the reason for anything else: with
--allow-untrusted-code the code of an uploaded model runs in the worker and may write anything there, so a line
is plain JSON (never unpickled) and nothing in it is trusted.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

__all__ = [
    "FAILURES",
    "JOB_FILE",
    "MAX_LINE",
    "MAX_TEXT",
    "OUT_DIR",
    "WORKER_LOG",
    "Failed",
    "LogLine",
    "ProtocolError",
    "Ready",
    "StageProgress",
    "Succeeded",
    "WorkerEvent",
    "decode",
    "encode",
]

JOB_FILE = "job.json"  # in the job's folder: JobOptions.to_dict(), written by the server
OUT_DIR = "out"  # in the job's folder: the artifacts, written atomically by run_job
WORKER_LOG = "worker.log"  # in the job's folder: the worker's stderr
MAX_LINE = 1 << 20  # bytes of one event line; a longer one is malformed
MAX_STAGE = 200  # characters of a stage name kept
MAX_TEXT = 4000  # characters of a log line or a failure message kept
FAILURES = ("BAD_INPUT", "PARITY", "WORKER")  # the proto's Failure names (convert.errors.Outcome.failure)


class ProtocolError(ValueError):
    """A line that is not a valid event; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Ready:
    """The worker has imported what a job needs and waits for one."""

    kind: ClassVar[str] = "ready"


@dataclasses.dataclass(frozen=True)
class StageProgress:
    """What runs now, and the fraction of the whole job done."""

    kind: ClassVar[str] = "progress"
    stage: str
    progress: float  # in [0, 1]

    def __post_init__(self) -> None:
        _set_text(self, "stage", MAX_STAGE)
        value = self.progress
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ProtocolError(f"progress {_short(value)} is not a fraction in [0, 1]")
        object.__setattr__(self, "progress", float(value))


@dataclasses.dataclass(frozen=True)
class LogLine:
    """A line for the user (a warning about the model, say)."""

    kind: ClassVar[str] = "log"
    line: str

    def __post_init__(self) -> None:
        _set_text(self, "line", MAX_TEXT)


@dataclasses.dataclass(frozen=True)
class Succeeded:
    """The job is done: its results are in `out/`."""

    kind: ClassVar[str] = "succeeded"


@dataclasses.dataclass(frozen=True)
class Failed:
    """The job failed: the kind of failure (a FAILURES name) and one line saying why."""

    kind: ClassVar[str] = "failed"
    failure: str
    message: str

    def __post_init__(self) -> None:
        if self.failure not in FAILURES:
            raise ProtocolError(f"failure {_short(self.failure)} is not one of {', '.join(FAILURES)}")
        _set_text(self, "message", MAX_TEXT)


WorkerEvent = Ready | StageProgress | LogLine | Succeeded | Failed
_KINDS: dict[str, type] = {cls.kind: cls for cls in (Ready, StageProgress, LogLine, Succeeded, Failed)}


def encode(event: WorkerEvent) -> str:
    """`event` as one line of JSON (without the newline)."""
    return json.dumps({"event": event.kind, **dataclasses.asdict(event)})


def decode(line: bytes | str) -> WorkerEvent:
    """The event on one line from a worker (its newline stripped or not).

    Raises:
        ProtocolError: for anything but a JSON object with a known `event` and exactly its fields, each valid.
    """
    if len(line) > MAX_LINE:
        raise ProtocolError(f"the line is longer than {MAX_LINE} bytes")
    try:
        data = json.loads(line)
    except ValueError as e:  # UnicodeDecodeError is one too
        raise ProtocolError(f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"not a JSON object but {type(data).__name__}")
    kind = data.pop("event", None)
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"event {_short(kind)} is not one of {', '.join(_KINDS)}")
    names = [field.name for field in dataclasses.fields(cls)]
    if sorted(data) != sorted(names):
        given = _short(sorted(data)) if data else "none"
        raise ProtocolError(f"a {kind} event has the fields {names or 'none'}, not {given}")
    return cls(**data)


def _set_text(event: Any, name: str, limit: int) -> None:
    """Check that field `name` of `event` is a string, and keep at most `limit` characters of it."""
    value = getattr(event, name)
    if not isinstance(value, str):
        raise ProtocolError(f"{name} {_short(value)} is not a string")
    object.__setattr__(event, name, value[:limit])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."
