"""The Converter service's RPCs. They only receive, record and serve: conversions run in the worker pool."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator

import grpc

from convert.errors import ConvertError
from convert.load import resolve_spec
from server import wire
from server.caps import check_caps
from server.config import ServerConfig
from server.datadir import DataDir, DiskFull, disk_full
from server.events import CLOSED, EventHub, is_final
from server.limits import CallLimits, IdleWatchdog, TooMany, client_host
from server.pool import QueueFull, WorkerPool
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc
from server.runners import Unsatisfiable
from server.store import FINISHED, SUCCEEDED, JobRecord, JobStore
from server.uploads import MAX_CHUNK, UploadError, check_header, data_file_names, receive
from server.worker.protocol import JOB_FILE, clean_text

__all__ = ["ConverterServicer"]

_JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: the only job ids that ever become paths
MAX_LIST = 1000
DEFAULT_LIST = 100
_LIST_BYTES = MAX_CHUNK // 2  # a ListJobs page stops growing here, well under the message limit
_WATCH_POLL = 1.0  # seconds between checks that a Watch's client is still there
_CALL_ENDED = object()  # put in a Watch's inbox when its call ends (the client cancelled or went away)
_DISK_FULL = "the server's disk is full: submit again later, or ask the operator to free space (`convert jobs delete`)"


class ConverterServicer(pb_grpc.ConverterServicer):
    """The RPCs of proto/converter.proto's Converter service, under their generated names."""

    def __init__(self, config: ServerConfig, store: JobStore, pool: WorkerPool, hub: EventHub, data: DataDir):
        self._config, self._store, self._pool, self._hub, self._data = config, store, pool, hub, data
        self._limits = CallLimits({"watch": config.max_watches, "upload": config.max_uploads}, config.max_per_client)
        self._watchdog = IdleWatchdog()
        self.closing = False  # set on shutdown: no new jobs

    def close(self) -> None:
        self._watchdog.stop()

    def Submit(self, request_iterator: Iterator[pb.SubmitRequest], context: grpc.ServicerContext) -> pb.SubmitResponse:
        if self.closing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: submit again in a moment")
        try:
            with self._limits.slot("upload", client_host(context.peer())):
                return self._submit(request_iterator, context)
        except TooMany as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    def _submit(self, request_iterator: Iterator[pb.SubmitRequest], context: grpc.ServicerContext):
        idle = self._config.upload_idle_timeout
        stalled = f"the upload sent nothing for {idle:g} s and was ended: send the chunks without pauses, and retry"
        with self._watchdog.follow(context, idle, stalled) as alive:
            requests = _signalling(request_iterator, alive)
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream's first message must be a SubmitHeader")
            header = first.header
            try:
                check_header(header, self._config)
                if header.WhichOneof("source") == "factory":
                    self._config.check_factory(resolve_spec(header.factory.spec))  # timm:NAME -> timm.models:NAME
                data, val, calibration = data_file_names(header)
                options = wire.from_proto(  # refused before the upload
                    header.options, model="", data=data, val=val, calibration=calibration
                )
                check_caps(options)
                declared = header.size_bytes + sum(file.size_bytes for file in header.data_files)
                self._data.check_room(declared, self._config.min_free_mb)
            except UploadError as e:
                context.abort(e.code, str(e))
            except ConvertError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            except DiskFull as e:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
            try:
                self._pool.admit(options)  # no node of the runner can ever run it: refused now, not queued forever
            except Unsatisfiable as e:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            try:
                with self._pool.reservation() as enqueue:  # the place is taken now: concurrent Submits count
                    job_id = self._receive(requests, header, options, context)
                    enqueue(job_id)
            except QueueFull:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the queue is full ({self._config.max_queued} jobs waiting): submit again when some have run",
                )
        return pb.SubmitResponse(job_id=job_id)

    def _receive(self, requests, header: pb.SubmitHeader, options, context: grpc.ServicerContext) -> str:
        """Receive the upload into a new job's folder and record the job. Returns its id."""
        job_id = uuid.uuid4().hex
        folder = self._data.jobs / job_id
        done = False
        try:
            folder.mkdir(mode=0o700)
            upload = receive(requests, header, folder)
            if header.WhichOneof("source") == "factory":
                source = header.factory.spec
                options = dataclasses.replace(options, model=source, weights=upload and upload.name)
            else:
                source = os.path.basename(header.model_file.filename)[:200] or "uploaded model"
                options = dataclasses.replace(options, model=upload.name)
            (folder / JOB_FILE).write_text(json.dumps(options.to_dict()))
            self._store.create(job_id, clean_text(source), options.to_dict())
            done = True
        except UploadError as e:
            context.abort(e.code, str(e))
        except (OSError, sqlite3.Error) as e:
            if not disk_full(e):
                raise
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, _DISK_FULL)
        finally:
            if not done:  # refused, failed, or the client went away: nothing is kept
                shutil.rmtree(folder, ignore_errors=True)
        return job_id

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        job_id = self._record(request.job_id, context).id
        try:
            with self._limits.slot("watch", client_host(context.peer())):
                yield from self._watch(job_id, context)
        except TooMany as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

    def _watch(self, job_id: str, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        inbox = self._hub.subscribe(job_id)  # before reading the state, so that no change falls in between
        context.add_callback(lambda: inbox.put(_CALL_ENDED))  # a client that goes away frees its thread at once
        deadline = time.monotonic() + self._config.watch_max_age  # then the client watches again
        try:
            record = self._store.get(job_id)
            if record is None:  # deleted meanwhile
                return
            current = wire.job_event(record)
            yield current
            if is_final(current):
                return
            last = (current.state, current.progress)
            while context.is_active() and (left := deadline - time.monotonic()) > 0:
                try:
                    event = inbox.get(timeout=min(_WATCH_POLL, left))
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
        known = set(pb.JobState.values()) - {pb.JOB_STATE_UNSPECIFIED}
        if unknown := [state for state in request.states if state not in known and state != 0]:
            names = ", ".join(pb.JobState.Name(state) for state in sorted(known))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"state {unknown[0]} is not a job state: use {names}")
        if request.page_token and not _JOB_ID.fullmatch(request.page_token):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server gave: start again")
        states = [pb.JobState.Name(state) for state in request.states if state != pb.JOB_STATE_UNSPECIFIED]
        limit = min(request.limit or DEFAULT_LIST, MAX_LIST)
        records = self._store.list(states, limit + 1, after=request.page_token)
        response, size = pb.ListJobsResponse(), 0
        for index, record in enumerate(records[:limit]):
            job = wire.job_message(record)
            size += job.ByteSize()
            if size > _LIST_BYTES and index:  # the rest on the next page: every message stays under the limit
                response.next_page_token = records[index - 1].id
                return response
            response.jobs.append(job)
        if len(records) > limit:
            response.next_page_token = records[limit - 1].id
        return response

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.Job:
        record = self._record(request.job_id, context)
        if record.state in FINISHED or not self._pool.cancel(record.id):
            record = self._store.get(record.id)
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {record.id} has already finished ({record.state}): nothing to cancel",
            )
        return wire.job_message(self._store.get(record.id))

    def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.ServicerContext) -> pb.DeleteJobResponse:
        record = self._record(request.job_id, context)
        if self._pool.is_active(record.id) or not self._store.delete(record.id):
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"job {record.id} is {self._store.get(record.id).state}: cancel it first, then delete it",
            )
        self._data.remove_job(record.id)
        return pb.DeleteJobResponse()

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
                f"job {record.id} has no artifact {request.name[:200]!r}: it has {', '.join(names)}",
            )
        try:
            fd = os.open(self._data.artifacts / record.id / request.name, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {record.id} was deleted meanwhile")
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


def _signalling(requests: Iterator[pb.SubmitRequest], alive) -> Iterator[pb.SubmitRequest]:
    """`requests`, calling `alive()` as each arrives (the idle watchdog's sign of life)."""
    for request in requests:
        alive()
        yield request
