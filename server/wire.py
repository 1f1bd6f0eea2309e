"""JobOptions <-> the proto's JobOptions message: the same settings on both sides of the wire."""

from __future__ import annotations

from collections.abc import Sequence

from convert.auto.planner import AutoConfig
from convert.distill.config import DistillConfig
from convert.distill.data import SYNTHETIC
from convert.errors import ConvertError
from convert.job import DistillJob, JobOptions
from convert.load import DTYPES
from convert.runtime.bench import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP, BenchConfig
from convert.runtime.export import DEFAULT_ATOL, OnnxConfig
from convert.surgery.config import DEFAULT_MIN_CHANNELS, ConvertConfig
from server.rpc import converter_pb2 as pb


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
            pb.BenchOptions(
                device=bench.device,
                warmup=bench.warmup,
                batch_sizes=bench.batch_sizes,
                runtime=bench.runtime,
                compile=bench.compile,
                dtype=bench.dtype,
                channels_last=bench.channels_last,
            )
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
            runtime=b.runtime or "ort",
            compile=b.compile,
            dtype=b.dtype or "float32",
            channels_last=b.channels_last,
        )
    auto = None
    if config.target == "auto":
        timed = bench or BenchConfig()  # the plan is timed where the benchmark runs
        auto = AutoConfig(
            target_speedup=_optional(message.auto, "target_speedup", AutoConfig.target_speedup),
            max_error=_optional(message.auto, "max_error"),
            device=timed.device,
            threads=timed.threads,
            runtime=timed.runtime,
            compile=timed.compile,
            dtype=timed.dtype,
            channels_last=timed.channels_last,
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


def _optional(message, field: str, default=None):
    return getattr(message, field) if message.HasField(field) else default
