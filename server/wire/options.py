"""JobOptions both ways: the proto's JobOptions message from the library's options and back, every field carried or,
on `LOCAL_ONLY`, refused."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from typing import Any

from convert import AutoConfig, BenchConfig, ConvertConfig, ConvertError, DistillConfig, OnnxConfig
from convert.distill.data import SYNTHETIC
from convert.job import CalibrateJob, DistillJob, JobOptions
from convert.load import DTYPES
from convert.runtime.quantize import QuantizeConfig
from server.rpc import converter_pb2 as pb

__all__ = ["LOCAL_ONLY", "calibration_files", "from_proto", "to_proto"]


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
        input_shapes=[
            pb.Shape(dims=shape, name=name)
            for shape, name in zip(options.input_shapes or (), options.input_names or _unnamed(options), strict=True)
        ],
        input_dtype=options.input_dtype,
        model_dtype=options.model_dtype or "",
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
    any_named = any(shape.name for shape in message.input_shapes)
    if any_named and not all(shape.name for shape in message.input_shapes):
        raise ConvertError("name every input shape or none: `input_names` go one per `input_shapes` entry")
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
        input_names=tuple(shape.name for shape in message.input_shapes) if any_named else None,
        model_dtype=message.model_dtype or None,
    )


def _unnamed(options: JobOptions) -> list[str]:
    """The wire's names of inputs given by position: empty, one per shape."""
    return [""] * len(options.input_shapes or ())


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


def _optional(message, field: str, default=None):
    return getattr(message, field) if message.HasField(field) else default
