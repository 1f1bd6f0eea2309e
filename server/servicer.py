"""The Converter service's RPCs. They only receive, record and serve: conversions run in the worker pool."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc

from convert.errors import ConvertError
from server import wire
from server.config import ServerConfig
from server.events import CLOSED, EventHub, is_final
from server.pool import WorkerPool
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc
from server.store import FINISHED, SUCCEEDED, JobRecord, JobStore
from server.uploads import MAX_CHUNK, UploadError, check_header, data_file_names, receive
from server.worker.protocol import JOB_FILE, OUT_DIR

__all__ = ["ConverterServicer"]

_JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: the only job ids that ever become paths
MAX_LIST = 1000
DEFAULT_LIST = 100
_WATCH_POLL = 1.0  # seconds between checks that a Watch's client is still there
_CALL_ENDED = object()  # put in a Watch's inbox when its call ends (the client cancelled or went away)


class ConverterServicer(pb_grpc.ConverterServicer):
    """The RPCs of proto/converter.proto's Converter service, under their generated names."""

    def __init__(self, config: ServerConfig, store: JobStore, pool: WorkerPool, hub: EventHub, jobs_dir: Path):
        self._config, self._store, self._pool, self._hub, self._jobs_dir = config, store, pool, hub, jobs_dir
        self.closing = False  # set on shutdown: no new jobs

    def Submit(self, request_iterator: Iterator[pb.SubmitRequest], context: grpc.ServicerContext) -> pb.SubmitResponse:
        if self.closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: submit again in a moment")
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream's first message must be a SubmitHeader")
        header = first.header
        try:
            check_header(header, self._config)
            if header.WhichOneof("source") == "factory":
                self._config.check_factory(header.factory.spec)
            data, val, calibration = data_file_names(header)
            options = wire.from_proto(
                header.options, model="", data=data, val=val, calibration=calibration
            )  # refused before the upload
        except UploadError as e:
            context.abort(e.code, str(e))
        except ConvertError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        if self._pool.queued() >= self._config.max_queued:
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the queue is full ({self._config.max_queued} jobs waiting): submit again when some have run",
            )
        job_id = uuid.uuid4().hex
        folder = self._jobs_dir / job_id
        folder.mkdir()
        done = False
        try:
            upload = receive(request_iterator, header, folder)
            if header.WhichOneof("source") == "factory":
                source = header.factory.spec
                options = dataclasses.replace(options, model=source, weights=upload and upload.name)
            else:
                source = os.path.basename(header.model_file.filename)[:200] or "uploaded model"
                options = dataclasses.replace(options, model=upload.name)
            (folder / JOB_FILE).write_text(json.dumps(options.to_dict()))
            self._store.create(job_id, source, options.to_dict())
            done = True
        except UploadError as e:
            context.abort(e.code, str(e))
        finally:
            if not done:  # refused, failed, or the client went away: nothing is kept
                shutil.rmtree(folder, ignore_errors=True)
        self._pool.enqueue(job_id)
        return pb.SubmitResponse(job_id=job_id)

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        job_id = self._record(request.job_id, context).id
        inbox = self._hub.subscribe(job_id)  # before reading the state, so that no change falls in between
        context.add_callback(lambda: inbox.put(_CALL_ENDED))  # a client that goes away frees its thread at once
        try:
            current = wire.job_event(self._store.get(job_id))
            yield current
            if is_final(current):
                return
            last = (current.state, current.progress)
            while context.is_active():
                try:
                    event = inbox.get(timeout=_WATCH_POLL)
                except queue.Empty:
                    continue
                if event is _CALL_ENDED:
                    return
                if event is CLOSED:
                    context.abort(
                        grpc.StatusCode.UNAVAILABLE, "the server is shutting down: watch again once it is back"
                    )
                if not event.log and (event.state, event.progress) < last:
                    continue  # older than the state already sent
                yield event
                if is_final(event):
                    return
                if not event.log:
                    last = (event.state, event.progress)
        finally:
            self._hub.unsubscribe(job_id, inbox)

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.Job:
        return wire.job_message(self._record(request.job_id, context), with_report=True)

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> pb.ListJobsResponse:
        states = [pb.JobState.Name(state) for state in request.states if state != pb.JOB_STATE_UNSPECIFIED]
        limit = min(request.limit or DEFAULT_LIST, MAX_LIST)
        return pb.ListJobsResponse(jobs=[wire.job_message(record) for record in self._store.list(states, limit)])

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        record = self._record(request.job_id, context)
        if record.state in FINISHED or not self._pool.cancel(record.id):
            record = self._store.get(record.id)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {record.id} has already finished ({record.state}): nothing to cancel",
            )
        return wire.job_message(self._store.get(record.id))

    def Download(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[pb.DownloadChunk]:
        record = self._record(request.job_id, context)
        if record.state != SUCCEEDED:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {record.id} is {record.state}: artifacts can be downloaded once it has SUCCEEDED (Watch it)",
            )
        names = [artifact["name"] for artifact in record.artifacts]
        if request.name not in names:  # the name is checked against the list before it touches a path
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"job {record.id} has no artifact {request.name!r}: it has {', '.join(names)}",
            )
        fd = os.open(self._jobs_dir / record.id / OUT_DIR / request.name, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(MAX_CHUNK):
                yield pb.DownloadChunk(data=chunk)

    def _record(self, job_id: str, context: grpc.ServicerContext) -> JobRecord:
        if not _JOB_ID.fullmatch(job_id):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"job id {job_id[:80]!r} is not valid: job ids are 32 hex digits, as Submit returns them",
            )
        record = self._store.get(job_id)
        if record is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id} on this server: ListJobs shows the jobs it has")
        return record
