"""The worker's event lines: each event survives encode then decode, every malformed line is refused with its
reason, and the pool's supervisor, fed such lines by a scripted runner, records an outcome and goes on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from convert.errors import ConvertError, ParityError, outcome_of
from server.config import ServerConfig
from server.events import EventHub
from server.pool import WorkerPool
from server.rpc import converter_pb2 as pb
from server.store import JobStore
from server.worker.protocol import (
    FAILURES,
    MAX_LINE,
    MAX_TEXT,
    OUT_DIR,
    Failed,
    LogLine,
    ProtocolError,
    Ready,
    StageProgress,
    Succeeded,
    decode,
    encode,
)

EVENTS = [
    Ready(),
    StageProgress("factorize", 0.42),
    StageProgress("done", 1),
    LogLine("warning: a conv is shared"),
    Succeeded(),
    *(Failed(failure, "why") for failure in FAILURES),
]


@pytest.mark.parametrize("event", EVENTS, ids=[repr(e) for e in EVENTS])
def test_every_event_survives_encode_then_decode(event) -> None:
    line = encode(event)
    assert "\n" not in line
    assert decode(line) == event == decode((line + "\n").encode())


def test_failure_kinds_are_those_of_the_shared_mapping() -> None:
    errors = (ConvertError("x"), ParityError("x"), RuntimeError("x"), MemoryError())
    assert {outcome_of(e).failure for e in errors} == set(FAILURES) == set(pb.Failure.keys()) - {"FAILURE_UNSPECIFIED"}


MALFORMED = [
    (b'{"progress": "x"}', "event None is not one of ready, progress, log, succeeded, failed"),
    (b'{"event": "progress", "stage": "trace", "progress": "x"}', "progress 'x' is not a fraction in [0, 1]"),
    (b'{"event": "progress", "stage": "trace", "progress": 1.5}', "progress 1.5 is not a fraction"),
    (b'{"event": "progress", "stage": "trace", "progress": NaN}', "progress nan is not a fraction"),
    (b'{"event": "progress", "stage": "trace", "progress": true}', "progress True is not a fraction"),
    (b'{"event": "progress", "stage": ["a"], "progress": 0.5}', "stage ['a'] is not a string"),
    (b'{"event": "progress", "progress": 0.5}', "a progress event has the fields ['stage', 'progress'], not"),
    (b'{"event": "log", "line": null}', "line None is not a string"),
    (b'{"event": "failed", "failure": "OOPS", "message": "m"}', "failure 'OOPS' is not one of BAD_INPUT, PARITY"),
    (b'{"event": "failed", "message": "m"}', "a failed event has the fields ['failure', 'message'], not"),
    (b'{"event": "succeeded", "report": {}}', "a succeeded event has the fields none, not ['report']"),
    (b'{"event": 3}', "event 3 is not one of"),
    (b'{"event": "explode"}', "event 'explode' is not one of"),
    (b"[1, 2]", "not a JSON object but list"),
    (b"progress 50%", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"", "not JSON"),
    (b'{"event": "log", "line": "' + b"x" * MAX_LINE + b'"}', f"longer than {MAX_LINE} bytes"),
]


@pytest.mark.parametrize(("line", "reason"), MALFORMED, ids=[reason for _, reason in MALFORMED])
def test_malformed_lines_are_refused_with_the_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as error:
        decode(line)
    assert reason in str(error.value)
    assert len(str(error.value)) < 200  # whatever the line held


def test_long_text_is_cut_not_refused() -> None:
    event = decode(json.dumps({"event": "log", "line": "x" * (2 * MAX_TEXT)}))
    assert event == LogLine("x" * MAX_TEXT)
    assert Failed("WORKER", "y" * (2 * MAX_TEXT)).message == "y" * MAX_TEXT


# --- the supervisor, on a runner that plays back lines ---------------------------------------------------------


class Scripted:
    """An execution that sends `lines`, writes `report` (when given) into out/, and ends as `ended` says."""

    def __init__(self, folder: Path, lines: list[bytes], report: str | None, ended: str | None) -> None:
        self._folder, self._lines, self._report, self._ended = folder, lines, report, ended

    def lines(self) -> Iterator[bytes]:
        if self._report is not None:
            (self._folder / OUT_DIR).mkdir()
            (self._folder / OUT_DIR / "report.json").write_text(self._report)
        yield from self._lines

    def kill(self) -> None:
        pass

    def wait(self) -> str | None:
        return self._ended


class ScriptedRunner:
    def __init__(self, lines: list[bytes], report: str | None = None, ended: str | None = None) -> None:
        self._script = (lines, report, ended)

    def start(self) -> None:
        pass

    def launch(self, folder: Path) -> Scripted:
        return Scripted(folder, *self._script)

    def stop(self) -> None:
        pass


def run_one(tmp_path: Path, runner: ScriptedRunner) -> tuple[dict, list[pb.JobEvent]]:
    """One job through a pool on `runner`: its final record, and the events published for it."""
    job_id = "0" * 32
    (tmp_path / "jobs" / job_id).mkdir(parents=True)
    store, hub = JobStore(tmp_path / "jobs.sqlite"), EventHub()
    store.create(job_id, "test", {"model": "m"})
    inbox = hub.subscribe(job_id)
    pool = WorkerPool(ServerConfig(data_dir=tmp_path), store, hub, tmp_path / "jobs", runner)
    pool.start()
    pool.enqueue(job_id)
    deadline = time.monotonic() + 30
    while store.get(job_id).state in ("QUEUED", "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.stop(grace=1)
    events = []
    while not inbox.empty():
        events.append(inbox.get())
    record = store.get(job_id)
    store.close()
    return record, events


GOOD = [encode(StageProgress("trace", 0.5)).encode(), encode(LogLine("warning: w")).encode()]


def test_malformed_lines_never_stop_a_job_that_succeeds(tmp_path: Path) -> None:
    lines = [b'{"progress": "x"}', GOOD[0], b"\xff", GOOD[1], encode(Succeeded()).encode()]
    record, events = run_one(tmp_path, ScriptedRunner(lines, report='{"target": "separable"}'))
    assert (record.state, record.progress, record.report) == ("SUCCEEDED", 1.0, '{"target": "separable"}')
    assert [a["name"] for a in record.artifacts] == ["report.json"]
    assert [(e.stage, e.progress) for e in events if e.stage == "trace"] == [("trace", 0.5)]
    assert [e.log for e in events if e.log] == ["warning: w"]


def test_a_worker_that_sends_only_malformed_lines_fails_its_job_with_the_reason(tmp_path: Path) -> None:
    lines = [GOOD[0], b'{"event": "failed", "failure": "OOPS", "message": "m"}']
    record, events = run_one(tmp_path, ScriptedRunner(lines))
    assert (record.state, record.failure) == ("FAILED", "WORKER")
    assert "malformed event (failure 'OOPS' is not one of BAD_INPUT, PARITY, WORKER)" in record.message
    assert events[-1].state == pb.FAILED and events[-1].message == record.message


def test_a_failed_event_or_a_crash_is_recorded_as_it_came(tmp_path: Path) -> None:
    record, _ = run_one(tmp_path / "a", ScriptedRunner([encode(Failed("PARITY", "ORT differs")).encode()]))
    assert (record.state, record.failure, record.message) == ("FAILED", "PARITY", "ORT differs")
    crashed = ScriptedRunner([encode(Succeeded()).encode()], report="{}", ended="the worker process crashed")
    record, _ = run_one(tmp_path / "b", crashed)  # a success announced, then a crash: not a success
    assert (record.state, record.failure, record.message) == ("FAILED", "WORKER", "the worker process crashed")
