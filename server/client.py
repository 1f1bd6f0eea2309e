"""A client of the conversion service, for scripts and for `convert MODEL ... --server HOST:PORT`.

>>> from server.client import ConvertClient
>>> from convert.job import JobOptions
>>> with ConvertClient("localhost:50051") as client:
...     report = client.run(JobOptions("torchvision.models:resnet18", input_shapes=((1, 3, 224, 224),)), "out")
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from convert.artifacts import REPORT_JSON, atomic_dir, check_outdir
from convert.distill.data import SYNTHETIC
from convert.errors import ConvertError
from convert.files import model_file_kind, weights_kind
from convert.job import DistillJob, JobOptions, Progress, Warn
from convert.report.schema import Report
from convert.runtime.export import ParityError
from server import wire
from server.auth import call_metadata, channel_credentials
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc
from server.worker.protocol import clean_text

__all__ = ["CHUNK_BYTES", "FINAL_STATES", "ConvertClient", "JobFailed", "ServiceError"]

CHUNK_BYTES = 1 << 20  # upload chunks: the protocol's largest (fewer messages, faster on loopback)
FINAL_STATES = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
MAX_ARTIFACT_NAME = 255  # characters; an artifact name is a plain file name, never a path
_WATCH_RETRIES = 5  # times a Watch cut by the transport is opened again before the error is the caller's


class ServiceError(ConvertError):
    """The service refused a call (or could not be reached); `code` is its gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class JobFailed(ConvertError):
    """A job ended FAILED or CANCELLED; `job` is its final record."""

    def __init__(self, job: pb.Job) -> None:
        state = pb.JobState.Name(job.state).lower()
        super().__init__(f"job {job.id} {state}: {job.message}" if job.message else f"job {job.id} {state}")
        self.job = job


class ConvertClient:
    """Submit, watch, fetch and cancel conversion jobs on a server.

    Args:
        address: HOST:PORT of `convert serve`.
        auth_token: the server's token, when it has one.
        tls: speak TLS (implied by `tls_ca`).
        tls_ca: PEM file of the CA that signed the server's certificate (default: the system's roots).
    """

    def __init__(
        self, address: str, *, auth_token: str | None = None, tls: bool = False, tls_ca: str | os.PathLike | None = None
    ) -> None:
        self.address = address
        options = [("grpc.max_receive_message_length", CHUNK_BYTES + 64 * 1024)]
        if tls or tls_ca:
            credentials = channel_credentials(Path(tls_ca) if tls_ca else None)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.ConverterStub(self._channel)
        self._metadata = call_metadata(auth_token)

    def __enter__(self) -> ConvertClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def submit(self, options: JobOptions, *, sha256: bool | str = True, chunk_bytes: int = CHUNK_BYTES) -> str:
        """Upload the model (a file's bytes as they are, never loaded here) or the factory's weights, and the
        distillation inputs (`options.distill.data` and `.val`, tensor files sent as bytes), and submit.

        `sha256`: True computes each file's digest for the server to check, a string gives the model's (the data
        files' are computed), False sends none.

        Returns:
            The job id; the job runs on the server, asynchronously.

        Raises:
            ConvertError: for a missing local file, or distillation inputs the server cannot take (a folder of
                images); ServiceError for what the server refuses.
        """
        header, upload = _header(options)
        data = _data_files(options.distill, wire.calibration_files(options))
        header.data_files.extend(file for file, _ in data)
        if sha256:
            if upload is not None:
                header.sha256 = sha256 if isinstance(sha256, str) else _sha256(upload)
            for file, path in zip(header.data_files, (path for _, path in data), strict=True):
                file.sha256 = _sha256(path)
        files = [path for path in (upload, *(path for _, path in data)) if path is not None]
        with self._errors():
            return self._stub.Submit(_requests(header, files, chunk_bytes), metadata=self._metadata).job_id

    def watch(self, job_id: str) -> Iterator[pb.JobEvent]:
        """The job's current state, then each change, until it finishes. A stream the server ends early (its
        --watch-max-age) or the transport cuts is opened again: its first event is the state at that time."""
        retries = 0
        while True:
            try:
                with self._errors():
                    for event in self._stub.Watch(pb.WatchRequest(job_id=job_id), metadata=self._metadata):
                        yield event
                        retries = 0
                        if event.state in FINAL_STATES and not event.log:
                            return
            except ServiceError as e:
                if e.code != grpc.StatusCode.UNAVAILABLE or "shutting down" in str(e) or retries >= _WATCH_RETRIES:
                    raise
            retries += 1  # a stream that ended before the job did: open another
            if retries > _WATCH_RETRIES:
                raise ServiceError(grpc.StatusCode.UNAVAILABLE, f"the server keeps ending the watch of job {job_id}")
            time.sleep(min(2.0, 0.05 * 2**retries))

    def get(self, job_id: str) -> pb.Job:
        with self._errors():
            return self._stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self._metadata)

    def list(self, states: Sequence[int] = (), limit: int = 100) -> list[pb.Job]:
        """Jobs, newest first (at most `limit`, page by page); `states` are pb.JobState values (e.g. pb.RUNNING)."""
        jobs: list[pb.Job] = []
        token = ""
        with self._errors():
            while len(jobs) < limit:
                request = pb.ListJobsRequest(states=states, limit=min(limit - len(jobs), 1000), page_token=token)
                page = self._stub.ListJobs(request, metadata=self._metadata)
                jobs.extend(page.jobs)
                token = page.next_page_token
                if not token or not page.jobs:
                    break
        return jobs[:limit]

    def delete(self, job_id: str) -> None:
        """Delete a finished job on the server: its record, files and artifacts."""
        with self._errors():
            self._stub.DeleteJob(pb.DeleteJobRequest(job_id=job_id), metadata=self._metadata)

    def cancel(self, job_id: str) -> pb.Job:
        with self._errors():
            return self._stub.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=self._metadata)

    def report(self, job_id: str) -> Report:
        """The report of a SUCCEEDED job."""
        job = self.get(job_id)
        if job.state != pb.SUCCEEDED:
            raise JobFailed(job) if job.state in FINAL_STATES else ConvertError(f"job {job_id} has not finished yet")
        return self._report(job)

    def _report(self, job: pb.Job) -> Report:
        """A SUCCEEDED job's report: inlined in the record, or (a large one) its report.json downloaded."""
        if not job.report_as_artifact:
            return wire.report_of(job)
        artifact = next((a for a in job.artifacts if a.name == REPORT_JSON), None)
        if artifact is None:
            raise ConvertError(f"job {job.id}'s report is neither in its record nor among its artifacts")
        buffer = io.BytesIO()
        self._fetch(job.id, artifact, buffer)
        return wire.report_of(job, buffer.getvalue().decode())

    def download(self, job_id: str, outdir: str | os.PathLike, overwrite: bool = False) -> list[str]:
        """Every artifact of a SUCCEEDED job into `outdir`, atomically (as a whole, never half-written; earlier
        results there are replaced only with `overwrite`), each checked against its size and sha256.

        Returns:
            The names of the files written.
        """
        job = self.get(job_id)
        if job.state != pb.SUCCEEDED:
            raise JobFailed(job) if job.state in FINAL_STATES else ConvertError(f"job {job_id} has not finished yet")
        names = _artifact_names(job)  # checked before anything is written
        with atomic_dir(outdir, overwrite) as staging:
            for artifact in job.artifacts:
                # O_EXCL | O_NOFOLLOW: a new plain file in the staging folder, never a link or an earlier file
                fd = os.open(staging / artifact.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as f:
                    self._fetch(job_id, artifact, f)
        return names

    def wait(self, job_id: str, progress: Progress | None = None, on_log: Warn | None = None) -> pb.Job:
        """Follow the job until it finishes, passing on its progress and log lines. Returns its final record."""
        for event in self.watch(job_id):
            if event.log:
                if on_log:
                    on_log(event.log)
            elif progress and event.state == pb.RUNNING:
                progress(event.stage or "running", event.progress)
            elif progress and event.state == pb.QUEUED:
                progress("queued", 0.0)
            if event.state in FINAL_STATES and not event.log:
                break
        return self.get(job_id)

    def run(
        self,
        options: JobOptions,
        outdir: str | os.PathLike,
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        on_warning: Warn | None = None,
    ) -> Report:
        """What `convert.job.run_job` does, through the service: submit, follow, download into `outdir`.

        On Ctrl-C (KeyboardInterrupt) while the job runs, or an exception from `on_warning`, the job is cancelled.

        Raises:
            ServiceError: the server refused the submission; JobFailed: the job failed or was cancelled
                (ParityError when ONNX Runtime did not match PyTorch).
        """
        check_outdir(outdir, overwrite)  # before the upload, so a bad -o costs nothing
        job_id = self.submit(options)
        try:
            job = self.wait(job_id, progress, lambda line: on_warning and on_warning(line.removeprefix("warning: ")))
        except BaseException:  # Ctrl-C, or `on_warning` raising (--strict): the job is not left running
            with contextlib.suppress(ConvertError):
                self.cancel(job_id)
            raise
        if job.state == pb.FAILED and job.failure == pb.PARITY:
            raise ParityError(f"{job.message} (on the server, job {job_id})")
        if job.state != pb.SUCCEEDED:
            raise JobFailed(job)
        self.download(job_id, outdir, overwrite)
        return self._report(job)

    def _fetch(self, job_id: str, artifact: pb.Artifact, out) -> None:
        """Write the artifact's bytes to `out` (a binary file), stopping as soon as they pass its declared size."""
        digest, size = hashlib.sha256(), 0
        with self._errors():
            request = pb.DownloadRequest(job_id=job_id, name=artifact.name)
            stream = self._stub.Download(request, metadata=self._metadata)
            for chunk in stream:
                size += len(chunk.data)
                if size > artifact.size_bytes:
                    stream.cancel()
                    raise ConvertError(
                        f"the server sent more of {artifact.name} than the {artifact.size_bytes} bytes it declared: "
                        "download stopped; check the server (and use TLS to it)"
                    )
                out.write(chunk.data)
                digest.update(chunk.data)
        if size != artifact.size_bytes or digest.hexdigest() != artifact.sha256:
            raise ConvertError(f"{artifact.name} arrived damaged (size or sha256 differ): download it again")

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """gRPC errors as ServiceError, with the server's message (one line a person can act on)."""
        try:
            yield
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                details = (
                    f"cannot reach the conversion server at {self.address} ({details}): check the address, and that "
                    "`convert serve` runs there"
                    if "shutting down" not in details
                    else details
                )
            raise ServiceError(code, clean_text(details)) from None


def _artifact_names(job: pb.Job) -> list[str]:
    """The artifacts' names, each a plain file name (no folder, no `..`, no control character), once each.

    Raises:
        ConvertError: naming the first name that is not, before anything is written.
    """
    names = []
    for artifact in job.artifacts:
        name = artifact.name
        plain = (
            0 < len(name) <= MAX_ARTIFACT_NAME
            and name not in (".", "..")
            and not any(c in name for c in "/\\\0")
            and name.isprintable()
            and name not in names
        )
        if not plain:
            raise ConvertError(
                f"the server lists an artifact named {name[:80]!r}, which is not a plain file name (or comes twice): "
                "nothing was downloaded; check the server (and use TLS to it)"
            )
        names.append(name)
    return names


def _header(options: JobOptions) -> tuple[pb.SubmitHeader, Path | None]:
    """The Submit header for `options`, and the file to upload (None: a factory without weights)."""
    header = pb.SubmitHeader(options=wire.to_proto(options))
    path = Path(options.model)
    if path.exists() or ":" not in options.model:
        if options.weights is not None:
            raise ConvertError("`weights` goes with a factory spec (package.module:callable), not a model file")
        kind = model_file_kind(path)  # from the zip's names alone: the file is not loaded here
        header.model_file.CopyFrom(pb.ModelFile(format=wire.model_format(kind), filename=path.name))
        upload: Path | None = path
    else:
        header.factory.spec = options.model
        upload = Path(options.weights) if options.weights is not None else None
        if upload is not None:
            kind = weights_kind(upload)
            if kind is None:
                raise ConvertError(
                    f"cannot read weights from {upload}: give a state dict saved as .safetensors or with "
                    "torch.save(model.state_dict())"
                )
            header.factory.weights_format = wire.weights_format(kind)
    header.size_bytes = upload.stat().st_size if upload is not None else 0
    return header, upload


def _data_files(distill: DistillJob | None, calibration: Sequence[str] = ()) -> list[tuple[pb.DataFile, Path]]:
    """The distillation inputs to upload (training files unless synthetic, then validation files), and the
    calibration files (`wire.calibration_files`), each with its DataFile (sha256 not set). Checked from their names
    and sizes alone: nothing is loaded here.

    Raises:
        ConvertError: for a folder of images (they stay local), `synthetic` validation, or an unknown format.
    """
    train = () if distill is None or distill.data == (SYNTHETIC,) else distill.data
    files = []
    for role, option, sources in (
        (pb.DataFile.TRAIN, "--distill", train),
        (pb.DataFile.VAL, "--val", () if distill is None else distill.val or ()),
        (pb.DataFile.CALIBRATE, "--calibrate", calibration),
    ):
        for source in sources:
            path = Path(source)
            if str(source) == SYNTHETIC:
                raise ConvertError(
                    "give several data sources only as one tensor file per model input"
                    if role != pb.DataFile.VAL
                    else "--val synthetic is not available with --server: give a tensor file, or leave --val out "
                    "(validation inputs are then held out of the training inputs, or synthetic for synthetic training)"
                )
            if not path.exists():
                raise ConvertError(f"{option} {source}: no such file (for random inputs, write --distill synthetic)")
            if path.is_dir():
                raise ConvertError(
                    f"{option} {source} is a folder of images, which the server does not take: convert it to a "
                    "tensor file of preprocessed inputs shaped N,C,H,W first (e.g. numpy.save to a .npy), and give that"
                )
            kind = wire.DATA_SUFFIXES.get(path.suffix.lower())
            if kind is None:
                raise ConvertError(
                    f"{option} {source} is not a tensor file the server takes: give a "
                    f"{', '.join(wire.DATA_SUFFIXES)} file"
                )
            size = path.stat().st_size
            files.append((pb.DataFile(role=role, format=kind, size_bytes=size, filename=path.name), path))
    return files


def _requests(header: pb.SubmitHeader, files: Sequence[Path], chunk_bytes: int) -> Iterator[pb.SubmitRequest]:
    """The header, then each file's bytes in chunks of its own."""
    yield pb.SubmitRequest(header=header)
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_bytes):
                yield pb.SubmitRequest(chunk=chunk)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
