"""Every conversion between the proto's messages and the domain: JobOptions both ways, the file format tables,
job records and their events as Job and JobEvent messages, and a job's report."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from convert.auto.planner import AutoConfig
from convert.distill.data import SYNTHETIC
from convert.distill.trainer import DistillConfig
from convert.errors import ConvertError
from convert.files import FileKind
from convert.job import DistillJob, JobOptions
from convert.load import DTYPES
from convert.report.schema import Report
from convert.runtime.bench import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP, BenchConfig
from convert.runtime.export import DEFAULT_ATOL, OnnxConfig
from convert.surgery.config import DEFAULT_MIN_CHANNELS, ConvertConfig
from server.rpc import converter_pb2 as pb
from server.store import JobRecord

__all__ = [
    "DATA_FORMATS",
    "DATA_SUFFIXES",
    "MODEL_FORMATS",
    "WEIGHTS_FORMATS",
    "from_proto",
    "job_event",
    "job_message",
    "model_format",
    "report_of",
    "to_proto",
    "weights_format",
]

# Model files: each proto format, as convert.files.file_kind names what a file's content is.
MODEL_FORMATS: dict[int, FileKind] = {
    pb.ModelFile.PT2: "pt2",
    pb.ModelFile.PICKLE: "torch.save",
    pb.ModelFile.TORCHSCRIPT: "torchscript",
}
# A factory's weights: each proto format, as convert.files.weights_kind names it.
WEIGHTS_FORMATS: dict[int, str] = {pb.Factory.SAFETENSORS: "safetensors", pb.Factory.STATE_DICT: "torch.save"}
# Distillation data files: each proto format, as convert.files.tensor_file_kind names it (the suffix the server
# stores the file under, which convert.distill.data reads it by).
DATA_FORMATS: dict[int, str] = {
    pb.DataFile.NPY: ".npy",
    pb.DataFile.NPZ: ".npz",
    pb.DataFile.SAFETENSORS: ".safetensors",
    pb.DataFile.TORCH_SAVE: ".pt",
}
# The suffixes of the tensor files a client may upload (lowercase), and the proto format of each.
DATA_SUFFIXES: dict[str, int] = {suffix: format for format, suffix in DATA_FORMATS.items()} | {
    ".pth": pb.DataFile.TORCH_SAVE
}


def model_format(kind: FileKind) -> int:
    """The proto's ModelFile.Format of a model file of this kind (`convert.files.file_kind`)."""
    return next(format for format, name in MODEL_FORMATS.items() if name == kind)


def weights_format(kind: str) -> int:
    """The proto's Factory.WeightsFormat of a weights file of this kind (`convert.files.weights_kind`)."""
    return next(format for format, name in WEIGHTS_FORMATS.items() if name == kind)


def job_message(record: JobRecord, with_report: bool = False) -> pb.Job:
    """The wire form of a job record (the report only with `with_report`: it can be large)."""
    return pb.Job(
        id=record.id,
        state=pb.JobState.Value(record.state),
        stage=record.stage,
        progress=record.progress,
        message=record.message,
        failure=_failure(record.failure),
        created_at=record.created,
        started_at=record.started,
        finished_at=record.finished,
        source=record.source,
        options=to_proto(JobOptions.from_dict(record.options)),
        report_json=record.report if with_report else "",
        artifacts=[pb.Artifact(**artifact) for artifact in record.artifacts],
    )


def job_event(record: JobRecord) -> pb.JobEvent:
    """The event that says where a job stands now (the first event of every Watch, and each change of state)."""
    return pb.JobEvent(
        job_id=record.id,
        state=pb.JobState.Value(record.state),
        stage=record.stage,
        progress=record.progress,
        message=record.message,
        failure=_failure(record.failure),
        time=time.time(),
    )


def report_of(job: pb.Job) -> Report:
    """The report of a SUCCEEDED job, as the server sent it in GetJob."""
    return Report.from_dict(json.loads(job.report_json))


def to_proto(options: JobOptions) -> pb.JobOptions:
    """The wire form of `options` (its model, weights and distillation data files travel separately, as the
    upload: `distill.data` is "synthetic" or empty)."""
    config = options.config
    message = pb.JobOptions(
        target=config.target,
        full_rank=config.rank == "full",
        no_pointwise=not config.pointwise,
        include=config.include or "",
        exclude=config.exclude or "",
        min_channels=config.min_channels,
        input_shapes=[pb.Shape(dims=shape) for shape in options.input_shapes or ()],
        input_dtype=options.input_dtype,
    )
    if isinstance(config.rank, int):
        message.rank = config.rank
    if config.energy is not None:
        message.energy = config.energy
    if config.groups is not None:
        message.groups = config.groups
    if options.onnx is not None:
        onnx = options.onnx
        message.onnx.CopyFrom(pb.OnnxOptions(static_shapes=not onnx.dynamic_batch, atol=onnx.atol))
        if onnx.opset is not None:
            message.onnx.opset = onnx.opset
    if options.auto is not None:
        message.auto.target_speedup = options.auto.target_speedup
        if options.auto.max_error is not None:
            message.auto.max_error = options.auto.max_error
    if options.distill is not None:
        job, config = options.distill, options.distill.config
        local = [o for o, v in (("--resume", job.resume), ("--workers", config.workers)) if v]
        local += ["--image-mean/--image-std"] if job.image_mean or job.image_std else []
        if local:
            raise ConvertError(f"{', '.join(local)} apply to local runs only: drop them with --server")
        message.distill.CopyFrom(pb.DistillOptions(data=SYNTHETIC if job.data == (SYNTHETIC,) else ""))
        for name in _DISTILL_FIELDS:
            if getattr(config, name) is not None:
                setattr(message.distill, name, getattr(config, name))
    if options.bench is not None:
        bench = options.bench
        message.benchmark.CopyFrom(
            pb.BenchOptions(device=bench.device, warmup=bench.warmup, batch_sizes=bench.batch_sizes)
        )
        if bench.threads is not None:
            message.benchmark.threads = bench.threads
        if bench.duration is not None:
            message.benchmark.duration_seconds = bench.duration
        else:
            message.benchmark.runs = bench.runs
    return message


def from_proto(
    message: pb.JobOptions,
    model: str,
    weights: str | None = None,
    data: Sequence[str] = (),
    val: Sequence[str] = (),
) -> JobOptions:
    """The JobOptions of a submitted job, for the model source `model` (and `weights`) stored on the server, and
    the uploaded distillation inputs stored there: `data` (training, unless the options say synthetic) and `val`.

    Raises:
        ConvertError: for options the library refuses (the service answers INVALID_ARGUMENT with the message).
    """
    if message.full_rank and message.HasField("rank"):
        raise ConvertError("give either rank or full_rank, not both")
    rank: int | str | None = "full" if message.full_rank else _optional(message, "rank")
    config = ConvertConfig(
        target=message.target or "separable",
        rank=rank,  # type: ignore[arg-type]
        energy=_optional(message, "energy"),
        groups=_optional(message, "groups"),
        pointwise=not message.no_pointwise,
        include=message.include or None,
        exclude=message.exclude or None,
        min_channels=_optional(message, "min_channels", DEFAULT_MIN_CHANNELS),
    )
    onnx = bench = None
    if message.HasField("onnx"):
        o = message.onnx
        onnx = OnnxConfig(_optional(o, "opset"), not o.static_shapes, _optional(o, "atol", DEFAULT_ATOL))
    if message.HasField("benchmark"):
        b = message.benchmark
        if b.HasField("runs") and b.HasField("duration_seconds"):
            raise ConvertError("give either runs or duration_seconds for the benchmark, not both")
        bench = BenchConfig(
            device=b.device or "auto",
            threads=_optional(b, "threads"),
            warmup=_optional(b, "warmup", DEFAULT_WARMUP),
            runs=_optional(b, "runs", DEFAULT_RUNS),
            duration=_optional(b, "duration_seconds"),
            batch_sizes=tuple(b.batch_sizes) or DEFAULT_BATCH_SIZES,
        )
    auto = None
    if config.target == "auto":
        device, threads = (bench.device, bench.threads) if bench else ("auto", None)
        auto = AutoConfig(
            target_speedup=_optional(message.auto, "target_speedup", AutoConfig.target_speedup),
            max_error=_optional(message.auto, "max_error"),
            device=device,
            threads=threads,
        )
    elif message.HasField("auto"):
        raise ConvertError("auto options go with target 'auto'")
    if message.input_dtype and message.input_dtype not in DTYPES:
        raise ConvertError(f"input dtype {message.input_dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    for shape in message.input_shapes:
        if not shape.dims or 0 in shape.dims:
            raise ConvertError(f"input shape {list(shape.dims)} is not valid: use positive sizes, e.g. 1,3,224,224")
    if (data or val) and not message.HasField("distill"):
        raise ConvertError("data files go with distillation: set the distill options, or send no data files")
    return JobOptions(
        model=model,
        weights=weights,
        input_shapes=tuple(tuple(shape.dims) for shape in message.input_shapes) or None,
        input_dtype=message.input_dtype or "float32",
        config=config,
        onnx=onnx,
        bench=bench,
        auto=auto,
        distill=_distill(message.distill, bench, data, val) if message.HasField("distill") else None,
    )


def _distill(
    message: pb.DistillOptions, bench: BenchConfig | None, data: Sequence[str], val: Sequence[str]
) -> DistillJob:
    """The distillation settings, training on `synthetic` inputs or on the uploaded files `data`."""
    if message.data == SYNTHETIC and data:
        raise ConvertError(
            "the training inputs are either synthetic or uploaded data files, not both: leave data empty to train "
            "on the files, or send no training files"
        )
    if message.data not in ("", SYNTHETIC):
        raise ConvertError(
            f"distillation data {message.data!r} is not available on the service: upload the inputs as tensor files "
            "(`convert MODEL --distill inputs.npy --server HOST:PORT` does; a folder of images must be converted to "
            "a tensor file first), or use data 'synthetic'"
        )
    if not message.data and not data:
        raise ConvertError(
            "distillation needs training inputs: upload tensor files of them (data files of role TRAIN), or set "
            "data 'synthetic'"
        )
    fields = {f.name: value for f, value in message.ListFields() if f.name in _DISTILL_FIELDS}
    device = "auto" if bench is None or bench.device == "tensorrt" else bench.device
    return DistillJob(
        data=tuple(data) or (SYNTHETIC,), config=DistillConfig(device=device, **fields), val=tuple(val) or None
    )


# DistillConfig fields that travel in DistillOptions under the same names
_DISTILL_FIELDS = (
    "steps",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "feature_weight",
    "loss",
    "temperature",
    "batchnorm",
    "amp",
)


def _failure(name: str) -> int:
    """A job record's failure kind ('' when none) as the proto's Failure."""
    return pb.Failure.Value(name) if name else pb.FAILURE_UNSPECIFIED


def _optional(message, field: str, default=None):
    return getattr(message, field) if message.HasField(field) else default
