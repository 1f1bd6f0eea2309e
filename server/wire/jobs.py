"""Job records and workers' events as the proto's Job and JobEvent messages, and a job's report from them."""

from __future__ import annotations

import json
import time
from typing import Any

from convert.job import JobOptions
from convert.report.schema import Report
from server.rpc import converter_pb2 as pb
from server.store import JobRecord
from server.wire.options import to_proto
from server.worker.protocol import LogLine, StageProgress

__all__ = ["MAX_INLINE_REPORT", "job_event", "job_message", "report_of", "worker_event"]

MAX_INLINE_REPORT = 512 << 10  # bytes of report.json that GetJob inlines; a larger one is downloaded


def job_message(record: JobRecord, with_report: bool = False) -> pb.Job:
    """The wire form of a job record (the report only with `with_report`, and only when it is small: a larger one
    is `report_as_artifact`, for Download, so that the message stays under gRPC's limit)."""
    inline = with_report and len(record.report.encode()) <= MAX_INLINE_REPORT
    return pb.Job(
        id=record.id,
        **_standing(record),
        created_at=record.created,
        started_at=record.started,
        finished_at=record.finished,
        source=record.source,
        options=to_proto(JobOptions.from_dict(record.options)),
        report_json=record.report if inline else "",
        artifacts=[pb.Artifact(**artifact) for artifact in record.artifacts],
        report_as_artifact=with_report and bool(record.report) and not inline,
    )


def job_event(record: JobRecord) -> pb.JobEvent:
    """The event that says where a job stands now (the first event of every Watch, and each change of state)."""
    return pb.JobEvent(
        job_id=record.id,
        **_standing(record),
        time=time.time(),
    )


def worker_event(job_id: str, event: StageProgress | LogLine) -> pb.JobEvent:
    """A running job's progress, or a log line of it, as Watch streams them."""
    if isinstance(event, StageProgress):
        return pb.JobEvent(
            job_id=job_id, state=pb.RUNNING, stage=event.stage, progress=event.progress, time=time.time()
        )
    return pb.JobEvent(job_id=job_id, state=pb.RUNNING, log=event.line, time=time.time())


def report_of(job: pb.Job, text: str | None = None) -> Report:
    """The report of a SUCCEEDED job, as the server sent it in GetJob (or `text`, report.json downloaded)."""
    return Report.from_dict(json.loads(job.report_json if text is None else text))


def _standing(record: JobRecord) -> dict[str, Any]:
    """Where a job stands, the fields that Job and JobEvent share: state, stage, progress, message, failure."""
    failure = pb.Failure.Value(record.failure) if record.failure else pb.FAILURE_UNSPECIFIED  # '': none
    return {
        "state": pb.JobState.Value(record.state),
        "stage": record.stage,
        "progress": record.progress,
        "message": record.message,
        "failure": failure,
    }
