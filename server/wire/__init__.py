"""Every conversion between the proto's messages and the domain: JobOptions both ways (`options`), the file format
tables (`formats`), job records and workers' events as Job and JobEvent messages, and a job's report (`jobs`)."""

from server.wire.formats import (
    DATA_FORMATS,
    DATA_SUFFIXES,
    MODEL_FORMATS,
    WEIGHTS_FORMATS,
    model_format,
    weights_format,
)
from server.wire.jobs import MAX_INLINE_REPORT, job_event, job_message, report_of, worker_event
from server.wire.options import LOCAL_ONLY, calibration_files, from_proto, to_proto

__all__ = [
    "DATA_FORMATS",
    "DATA_SUFFIXES",
    "LOCAL_ONLY",
    "MAX_INLINE_REPORT",
    "MODEL_FORMATS",
    "WEIGHTS_FORMATS",
    "calibration_files",
    "from_proto",
    "job_event",
    "job_message",
    "model_format",
    "report_of",
    "to_proto",
    "weights_format",
    "worker_event",
]
