"""Parsed arguments -> the library's options: JobOptions and its configs, the output folder, the server to use."""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.auto import AutoConfig
from convert.cli.flags import AUTO_OPTIONS, DISTILL_JOB_OPTIONS, DISTILL_OPTIONS, QUANTIZE_OPTIONS, flag
from convert.cli.remote import Server
from convert.distill import DistillConfig
from convert.errors import ConvertError
from convert.job import CalibrateJob, DistillJob, JobOptions
from convert.runtime import BenchConfig, OnnxConfig
from convert.runtime.quantize import QuantizeConfig
from convert.surgery.config import ConvertConfig

# The refusals here are the command line's own (an option given without the one it goes with); every other check is
# the library's, made when the options are built (JobOptions, the config dataclasses) or in `preflight`.

__all__ = [
    "bench_config",
    "convert_config",
    "input_names",
    "input_shapes",
    "inspect_configs",
    "job_options",
    "model_args",
    "output_dir",
    "server_of",
]


def job_options(args: argparse.Namespace) -> JobOptions:
    """The job that `convert MODEL ...` asks for.

    Raises:
        ConvertError: an option is given without the one it goes with, or the library refuses a value.
    """
    if args.server is None and (args.accelerator is not None or args.resources):
        # Here the job runs where it is called: only a server's runner places it on a node.
        raise ConvertError("--accelerator and --resource choose a Ray node of a server: add --server HOST:PORT")
    config = convert_config(args)
    auto = _auto_config(args, config.target)
    quantize = _quantize_config(args)
    bench = bench_config(args) if args.benchmark or auto or quantize else None
    if bench is None and (args.runtime != "ort" or args.compile or args.bench_dtype != "float32" or args.channels_last):
        raise ConvertError(
            "--runtime, --compile, --bench-dtype and --channels-last go with --benchmark or --to auto: add --benchmark"
        )
    if not (args.onnx or bench) and (args.opset is not None or args.static_shapes):
        raise ConvertError("--opset and --static-shapes go with --onnx or --benchmark: add --onnx")
    return JobOptions(
        model=args.model,
        weights=args.weights,
        input_shapes=input_shapes(args),
        input_dtype=args.input_dtype,
        input_names=input_names(args),
        model_dtype=args.model_dtype,
        config=config,
        # the PyTorch runtime times the modules themselves: no ONNX export unless --onnx asks for one
        onnx=OnnxConfig(args.opset, not args.static_shapes, args.atol)
        if args.onnx or (bench and bench.runtime == "ort")
        else None,
        bench=bench,
        auto=auto,
        distill=_distill_job(args),
        plan=args.plan,
        quantize=quantize,
        accelerator=args.accelerator,
        resources=tuple(args.resources or ()),
        model_args=model_args(args),
        calibrate=_calibrate_job(args),
    )


def input_shapes(args: argparse.Namespace) -> tuple[tuple[int, ...], ...] | None:
    """--input-shape [NAME=]N,C,..., repeated: the shapes (None: not given)."""
    return tuple(shape for _, shape in args.input_shape) if args.input_shape else None


def input_names(args: argparse.Namespace) -> tuple[str, ...] | None:
    """The names of --input-shape NAME=N,C,...: one per input, or None when the inputs go by position.

    Raises:
        ConvertError: when some inputs are named and some are not.
    """
    names = [name for name, _ in args.input_shape or ()]
    if not any(names):
        return None
    if not all(names):
        raise ConvertError("name every --input-shape or none, e.g. --input-shape pixel_values=1,3,224,224")
    return tuple(names)


def model_args(args: argparse.Namespace) -> dict[str, object]:
    """--model-arg NAME=VALUE, repeated: the factory's keyword arguments (a name given twice: the last wins)."""
    return dict(args.model_arg or ())


def convert_config(args: argparse.Namespace, **overrides: object) -> ConvertConfig:
    """The conversion options, with `overrides` (ConvertConfig fields) replacing what the flags say."""
    fields = dict(
        target=args.target,
        rank=args.rank,
        energy=args.energy,
        groups=args.groups,
        pointwise=args.pointwise,
        include=args.include,
        exclude=args.exclude,
        min_channels=args.min_channels,
        transposed=args.transposed,
        include_grouped=args.include_grouped,
    )
    return ConvertConfig(**(fields | overrides))


def inspect_configs(args: argparse.Namespace) -> dict[str, ConvertConfig]:
    """What `convert inspect` compares, by column label: separable, and grouped with --groups (or --to grouped).

    Every conversion option is honoured (--rank, --energy, --include, ...); the ones it cannot show are refused.

    Raises:
        ConvertError: --to auto (it measures latency: a job's work), or --no-pointwise without a grouped column.
    """
    if args.target == "auto":
        raise ConvertError(
            "convert inspect shows what separable and grouped would save from the weights alone; --to auto times "
            "each layer on the runtime: run `convert MODEL --to auto ...` (its report has the plan)"
        )
    grouped = bool(args.groups) or args.target == "grouped"
    if not args.pointwise and not grouped:
        raise ConvertError("--no-pointwise goes with --to grouped: add --groups G")
    configs = {"separable": convert_config(args, target="separable", groups=None, pointwise=True)}
    if grouped:
        configs[f"grouped g{args.groups}"] = convert_config(args, target="grouped")
    return configs


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The benchmark options (of `convert --benchmark` and of `convert bench`)."""
    return BenchConfig(
        device=args.device,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        duration=args.duration,
        batch_sizes=args.batch_sizes,
        runtime=args.runtime,
        compile=args.compile,
        dtype=args.bench_dtype,
        channels_last=args.channels_last,
    )


def output_dir(args: argparse.Namespace, target: str) -> Path:
    """-o, or a folder named after the model and the target: next to a model file (`net-separable`), or here for
    a factory, after its module and callable (`torchvision.models.resnet18-separable`), so projects do not collide.
    """
    if args.output is not None:
        return args.output
    path = Path(args.model)
    if path.exists():
        return path.with_name(f"{path.stem}-{target}")
    return Path(f"{args.model.replace(':', '.').replace('/', '.')}-{target}")


def server_of(args: argparse.Namespace) -> Server | None:
    """The service to run the job on (--server), None to run it here."""
    if args.server is None:
        return None
    return Server(args.server, auth_token=args.auth_token, tls=args.tls, tls_ca=args.tls_ca)


def _auto_config(args: argparse.Namespace, target: str) -> AutoConfig | None:
    """The --to auto settings; None for the other targets (then none of its options may be given)."""
    if target != "auto":
        _refuse_given(args, AUTO_OPTIONS, "--to auto")
        return None
    return AutoConfig(
        target_speedup=AutoConfig.target_speedup if args.target_speedup is None else args.target_speedup,
        max_error=args.max_error,
        device=args.device,
        threads=args.threads,
        cache_dir=args.cache_dir,
        runtime=args.runtime,
        compile=args.compile,
        dtype=args.bench_dtype,
        channels_last=args.channels_last,
    )


def _distill_job(args: argparse.Namespace) -> DistillJob | None:
    """The --distill settings; None without --distill (then none of its options may be given)."""
    if not args.distill:
        _refuse_given(args, (*DISTILL_OPTIONS, *DISTILL_JOB_OPTIONS), "--distill DATA")
        return None
    fields = {name: getattr(args, name) for name in DISTILL_OPTIONS if getattr(args, name) is not None}
    device = "cuda" if args.device == "tensorrt" else args.device  # TensorRT is ONNX Runtime's: train on CUDA
    return DistillJob(
        data=tuple(args.distill),
        config=DistillConfig(device=device, **fields),
        val=None if args.val is None else tuple(args.val),
        image_mean=args.image_mean,
        image_std=args.image_std,
        resume=bool(args.resume),
    )


# QuantizeConfig field -> the dest of its flag, where they differ (--calibrate DATA: what the conversion calibrates
# on is what quantization calibrates on too)
_QUANTIZE_DESTS = {"calibration": "calibrate", "formats": "quant_formats"}


def _quantize_config(args: argparse.Namespace) -> QuantizeConfig | None:
    """The --quantize settings; None without --quantize (then none of its own options may be given)."""
    dests = {name: _QUANTIZE_DESTS.get(name, name) for name in QUANTIZE_OPTIONS}
    if args.quantize is None:
        given = [
            name
            for name, dest in dests.items()
            if name not in ("calibration", "calibration_samples") and getattr(args, dest) is not None
        ]
        if given:
            raise ConvertError(f"{flag(given[0])} goes with --quantize int8: add --quantize int8")
        return None
    fields = {name: getattr(args, dest) for name, dest in dests.items() if getattr(args, dest) is not None}
    data = tuple(source for source in fields.pop("calibration", ()) if source)
    if data:  # else: the --distill inputs
        fields["calibration"] = data
    return QuantizeConfig(**fields)


def _calibrate_job(args: argparse.Namespace) -> CalibrateJob | None:
    """The --calibrate settings; None without --calibrate (then --calibration-samples goes with --quantize only)."""
    if not args.calibrate:
        if args.calibration_samples is not None and args.quantize is None:
            raise ConvertError("--calibration-samples goes with --calibrate DATA: add --calibrate DATA")
        return None
    data = tuple(source for source in args.calibrate if source)
    if data and len(data) != len(args.calibrate):
        raise ConvertError("--calibrate without DATA means the --distill data: give DATA to every --calibrate, or none")
    samples = {} if args.calibration_samples is None else {"samples": args.calibration_samples}
    return CalibrateJob(data=data, **samples)


def _refuse_given(args: argparse.Namespace, names: tuple[str, ...], needed: str) -> None:
    """Refuse the first of `names` (options whose flags default to None) that was given without `needed`."""
    given = [name for name in names if getattr(args, name) is not None]
    if given:
        raise ConvertError(f"{flag(given[0])} goes with {needed}: add {needed}")
