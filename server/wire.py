"""Every conversion between the proto's messages and the domain: JobOptions both ways, the file format tables,
job records and workers' events as Job and JobEvent messages, and a job's report."""

from __future__ import annotations

import ast
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

from convert import AutoConfig, BenchConfig, ConvertConfig, ConvertError, DistillConfig, OnnxConfig
from convert.distill.data import SYNTHETIC
from convert.files import FileKind
from convert.job import CalibrateJob, DistillJob, JobOptions
from convert.load import DTYPES
from convert.report.schema import Report
from convert.runtime.quantize import QuantizeConfig
from server.rpc import converter_pb2 as pb
from server.store import JobRecord
from server.worker.protocol import LogLine, StageProgress

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


MAX_INLINE_REPORT = 512 << 10  # bytes of report.json that GetJob inlines; a larger one is downloaded


def model_format(kind: FileKind) -> int:
    """The proto's ModelFile.Format of a model file of this kind (`convert.files.file_kind`)."""
    return next(format for format, name in MODEL_FORMATS.items() if name == kind)


def weights_format(kind: str) -> int:
    """The proto's Factory.WeightsFormat of a weights file of this kind (`convert.files.weights_kind`)."""
    return next(format for format, name in WEIGHTS_FORMATS.items() if name == kind)


def job_message(record: JobRecord, with_report: bool = False) -> pb.Job:
    """The wire form of a job record (the report only with `with_report`, and only when it is small: a larger one
    is `report_as_artifact`, for Download, so that the message stays under gRPC's limit)."""
    inline = with_report and len(record.report.encode()) <= MAX_INLINE_REPORT
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
        report_json=record.report if inline else "",
        artifacts=[pb.Artifact(**artifact) for artifact in record.artifacts],
        report_as_artifact=with_report and bool(record.report) and not inline,
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


def to_proto(options: JobOptions) -> pb.JobOptions:
    """The wire form of `options` (its model, weights and distillation data files travel separately, as the
    upload: `distill.data` is "synthetic" or empty).

    Raises:
        ConvertError: for fields that apply to local runs only (`LOCAL_ONLY`) set to anything but their default.
    """
    _refuse_local_only(options)
    config = options.config
    message = pb.JobOptions(
        full_rank=config.rank == "full",
        no_pointwise=not config.pointwise,
        input_shapes=[pb.Shape(dims=shape) for shape in options.input_shapes or ()],
        input_dtype=options.input_dtype,
        accelerator=options.accelerator or "",
        resources=dict(options.resources),
        model_args={name: repr(value) for name, value in options.model_args.items()},
    )
    _put(message, config)
    if isinstance(config.rank, int):
        message.rank = config.rank
    if options.onnx is not None:
        message.onnx.SetInParent()
        _put(message.onnx, options.onnx)
        message.onnx.static_shapes = not options.onnx.dynamic_batch
    if options.bench is not None:
        bench = options.bench
        message.benchmark.SetInParent()
        _put(message.benchmark, bench)
        message.benchmark.batch_sizes.extend(bench.batch_sizes)
        if bench.duration is not None:
            message.benchmark.duration_seconds = bench.duration
        else:
            message.benchmark.runs = bench.runs
    if options.auto is not None:
        message.auto.SetInParent()
        _put(message.auto, options.auto)
        message.auto.threads = options.auto.threads or 0  # 0: the physical cores (unset: the benchmark's)
        message.auto.quantize.extend(options.auto.quantize)
    if options.distill is not None:
        distill = options.distill
        message.distill.SetInParent()
        message.distill.data = SYNTHETIC if distill.data == (SYNTHETIC,) else ""
        _put(message.distill, distill.config)
        message.distill.grad_clip = distill.config.grad_clip or 0.0  # 0: not clipped
    if options.quantize is not None:
        quantize = options.quantize
        if (
            quantize.calibration not in (None, (SYNTHETIC,))
            and options.calibrate
            and options.calibrate.data != quantize.calibration
        ):
            raise ConvertError(
                "on a server, `quantize` calibrates on what `calibrate` reads (one upload): give `calibration` the "
                "same inputs as `calibrate`, or leave it unset"
            )
        message.quantize.SetInParent()  # files: the upload of role CALIBRATE (`calibration_files`)
        message.quantize.calibration = SYNTHETIC if quantize.calibration == (SYNTHETIC,) else ""
        _put(message.quantize, quantize)
        message.quantize.formats.extend(quantize.formats)
    if options.calibrate is not None:
        message.calibrate.SetInParent()
        message.calibrate.data = SYNTHETIC if options.calibrate.data == (SYNTHETIC,) else ""
        message.calibrate.samples = options.calibrate.samples
    return message


def calibration_files(options: JobOptions) -> tuple[str, ...]:
    """The local files that travel as the upload of role CALIBRATE (`calibrate`'s data, else `quantize`'s
    `calibration`; none when synthetic), which both read on the server."""
    calibrate, quantize = options.calibrate, options.quantize
    files = calibrate.data if calibrate is not None and calibrate.data else quantize and quantize.calibration
    return () if files in (None, (SYNTHETIC,)) else tuple(str(source) for source in files)


def from_proto(
    message: pb.JobOptions,
    model: str,
    weights: str | None = None,
    data: Sequence[str] = (),
    val: Sequence[str] = (),
    calibration: Sequence[str] = (),
) -> JobOptions:
    """The JobOptions of a submitted job, for the model source `model` (and `weights`) stored on the server, and
    the uploaded distillation inputs stored there: `data` (training, unless the options say synthetic) and `val`, and
    the uploaded calibration inputs `calibration`, which the conversion's calibration and the quantization read
    (without them: the training inputs).

    Raises:
        ConvertError: for options the library refuses (the service answers INVALID_ARGUMENT with the message).
    """
    if message.full_rank and message.HasField("rank"):
        raise ConvertError("give either `rank` or `full_rank`, not both")
    rank = "full" if message.full_rank else _optional(message, "rank")
    config = ConvertConfig(rank=rank, pointwise=not message.no_pointwise, **_given(message, ConvertConfig))
    onnx = bench = auto = None
    if message.HasField("onnx"):
        onnx = OnnxConfig(dynamic_batch=not message.onnx.static_shapes, **_given(message.onnx, OnnxConfig))
    if message.HasField("benchmark"):
        bench = _bench(message.benchmark)
    if message.HasField("auto") and config.target != "auto":
        raise ConvertError("`auto` options go with `target`=auto")
    if config.target == "auto":
        auto = _auto(message.auto, bench)
    if message.input_dtype and message.input_dtype not in DTYPES:
        raise ConvertError(f"input dtype {message.input_dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    for shape in message.input_shapes:
        if not shape.dims or 0 in shape.dims:
            raise ConvertError(f"input shape {list(shape.dims)} is not valid: use positive sizes, e.g. 1,3,224,224")
    files = () if message.HasField("calibrate") else calibration  # else `calibrate`'s, which `quantize` reads too
    quantize = _quantize(message.quantize, files) if message.HasField("quantize") else None
    if auto is not None and message.auto.quantize:
        auto = dataclasses.replace(auto, quantize=tuple(message.auto.quantize))
    if (data or val) and not message.HasField("distill"):
        raise ConvertError("data files go with distillation: set the distill options, or send no data files")
    if calibration and not message.HasField("calibrate") and (quantize is None or quantize.calibration == (SYNTHETIC,)):
        raise ConvertError("calibration data files go with calibrate, or quantize not synthetic: set one, or send none")
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
        quantize=quantize,
        accelerator=message.accelerator or None,
        resources=dict(message.resources),
        model_args={name: _literal(name, text) for name, text in message.model_args.items()},
        calibrate=_calibrate(message.calibrate, calibration) if message.HasField("calibrate") else None,
    )


def _literal(name: str, text: str) -> object:
    """A model argument's value from its text on the wire (a Python literal, as `repr` writes it)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ConvertError(
            f'model argument {name}={text!r} is not a Python literal: send repr(value), e.g. "10" or "\'relu\'"'
        ) from e


# Fields that never travel: each with the reason. `to_proto` refuses one set to anything but its default, so that
# it is never dropped on the way.
LOCAL_ONLY: dict[tuple[type, str], str] = {
    (DistillJob, "resume"): "it continues from the checkpoint in a local OUTDIR",
    (DistillJob, "image_mean"): "it normalises folders of images, which are not uploaded (tensor files are)",
    (DistillJob, "image_std"): "it normalises folders of images, which are not uploaded (tensor files are)",
    (DistillConfig, "workers"): "its DataLoader processes decode folders of images, which are not uploaded",
    (AutoConfig, "cache_dir"): "it is a folder on the client; the server keeps its own latency cache",
    (JobOptions, "plan"): "it is a plan.json on the client (a plan upload is not supported yet)",
}

# The runtime and its settings, in BenchConfig and AutoConfig alike (an AutoOptions without them: the benchmark's).
_RUNTIME_SETTINGS = ("runtime", "compile", "dtype", "channels_last")
# The fields of each options class that travel under the same name in its message, set when not None (the others
# are carried by hand in to_proto and from_proto).
_SAME_NAME: dict[type, tuple[str, ...]] = {
    ConvertConfig: (
        *("target", "energy", "groups", "include", "exclude"),
        *("min_channels", "transposed", "include_grouped"),
    ),
    OnnxConfig: ("opset", "atol"),
    BenchConfig: ("device", "threads", "warmup", "runtime", "compile", "dtype", "channels_last"),
    AutoConfig: (
        *("target_speedup", "max_error", "device", "runs", "warmup", "max_candidates"),
        *_RUNTIME_SETTINGS,
    ),
    QuantizeConfig: ("calibration_samples", "calibration_method", "max_quant_error"),
    DistillConfig: (
        *("steps", "epochs", "batch_size", "lr", "weight_decay", "warmup", "loss", "temperature", "feature_weight"),
        *("batchnorm", "device", "amp", "eval_every", "seed", "processes"),
    ),
}


def _bench(message: pb.BenchOptions) -> BenchConfig:
    if message.HasField("runs") and message.HasField("duration_seconds"):
        raise ConvertError("give either `runs` or `duration_seconds` for the benchmark, not both")
    return BenchConfig(
        runs=_optional(message, "runs", BenchConfig.runs),
        duration=_optional(message, "duration_seconds"),
        batch_sizes=tuple(message.batch_sizes) or BenchConfig.batch_sizes,
        **_given(message, BenchConfig),
    )


def _auto(message: pb.AutoOptions, bench: BenchConfig | None) -> AutoConfig:
    """The latency-aware plan's settings; where the message does not say, on the benchmark's device, threads,
    runtime and runtime settings."""
    fields = _given(message, AutoConfig)
    fields.setdefault("device", bench.device if bench else "auto")
    for name in _RUNTIME_SETTINGS:
        if bench is not None:
            fields.setdefault(name, getattr(bench, name))
    if message.HasField("threads"):
        threads = message.threads or None
    else:
        threads = bench.threads if bench else None
    return AutoConfig(threads=threads, **fields)


def _quantize(message: pb.QuantizeOptions, files: Sequence[str]) -> QuantizeConfig:
    """The INT8 settings, calibrated on `synthetic` inputs or (empty) on the uploaded files `files`, else on what
    `calibrate` reads or the distillation's inputs."""
    if message.calibration not in ("", SYNTHETIC):
        raise ConvertError(
            f"calibration data {message.calibration!r} is not available on the service: upload tensor files of "
            "role CALIBRATE (leave it empty), or use 'synthetic'"
        )
    return QuantizeConfig(
        calibration=(SYNTHETIC,) if message.calibration else tuple(files) or None,
        formats=tuple(message.formats) or QuantizeConfig.formats,
        **_given(message, QuantizeConfig),
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
    fields = _given(message, DistillConfig)
    if "device" not in fields:  # a client older than DistillOptions.device: the benchmark's, as it was then
        fields["device"] = "auto" if bench is None or bench.device == "tensorrt" else bench.device
    if message.HasField("grad_clip"):
        fields["grad_clip"] = message.grad_clip or None  # 0: not clipped
    return DistillJob(data=tuple(data) or (SYNTHETIC,), config=DistillConfig(**fields), val=tuple(val) or None)


def _calibrate(message: pb.CalibrateOptions, files: Sequence[str]) -> CalibrateJob:
    """The calibration settings: on `synthetic` inputs, the uploaded files `files`, or the distillation's inputs."""
    if message.data not in ("", SYNTHETIC):
        raise ConvertError(
            f"calibration data {message.data!r} is not available on the service: upload the inputs as tensor files "
            "(data files of role CALIBRATE), or leave it empty to calibrate on the distillation's inputs"
        )
    if message.data == SYNTHETIC and files:
        raise ConvertError("calibration data is either synthetic or uploaded files, not both")
    data = (SYNTHETIC,) if message.data == SYNTHETIC else tuple(files)
    samples = {} if not message.HasField("samples") else {"samples": message.samples}
    return CalibrateJob(data=data, **samples)


def _refuse_local_only(options: JobOptions) -> None:
    """Raise ConvertError naming every `LOCAL_ONLY` field of `options` that is set, with the reasons."""
    distill = options.distill
    parts = [options, options.config, options.onnx, options.bench, options.auto, distill, distill and distill.config]
    set_here = []
    for part in (part for part in parts if part is not None):
        defaults = {field.name: field for field in dataclasses.fields(part)}
        for (cls, name), reason in LOCAL_ONLY.items():
            if isinstance(part, cls) and getattr(part, name) != _default(defaults[name]):
                set_here.append(f"`{name}` ({reason})")
    if set_here:
        verb, pronoun = ("applies", "it") if len(set_here) == 1 else ("apply", "them")
        raise ConvertError(f"{', '.join(set_here)} {verb} to local runs only: drop {pronoun} to run on a server")


def _put(message, options) -> None:
    """Copy the fields of `options` that travel under the same name (`_SAME_NAME`) into `message`, but None."""
    for name in _SAME_NAME[type(options)]:
        value = getattr(options, name)
        if value is not None:
            setattr(message, name, value)


def _given(message, cls: type) -> dict[str, Any]:
    """The fields of `message` that the sender set (present, or not empty) and that `cls` has under the same name:
    the others take the dataclass's defaults."""
    names = _SAME_NAME[cls]
    return {field.name: value for field, value in message.ListFields() if field.name in names}


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _failure(name: str) -> int:
    """A job record's failure kind ('' when none) as the proto's Failure."""
    return pb.Failure.Value(name) if name else pb.FAILURE_UNSPECIFIED


def _optional(message, field: str, default=None):
    return getattr(message, field) if message.HasField(field) else default
