"""Parsed arguments -> the library's options: JobOptions and its configs, the output folder, the server to use."""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.auto import AutoConfig
from convert.cli.flags import AUTO_OPTIONS, DISTILL_JOB_OPTIONS, DISTILL_OPTIONS, flag
from convert.cli.remote import Server
from convert.distill import DistillConfig
from convert.errors import ConvertError
from convert.job import CalibrateJob, DistillJob, JobOptions
from convert.runtime import BenchConfig, OnnxConfig
from convert.surgery.config import ConvertConfig

# The refusals here are the command line's own (an option given without the one it goes with); every other check is
# the library's, made when the options are built (JobOptions, the config dataclasses) or in `preflight`.

__all__ = ["bench_config", "convert_config", "inspect_configs", "job_options", "output_dir", "server_of"]


def job_options(args: argparse.Namespace) -> JobOptions:
    """The job that `convert MODEL ...` asks for.

    Raises:
        ConvertError: an option is given without the one it goes with, or the library refuses a value.
    """
    config = convert_config(args)
    auto = _auto_config(args, config.target)
    bench = bench_config(args) if args.benchmark or auto else None
    if not (args.onnx or bench) and (args.opset is not None or args.static_shapes):
        raise ConvertError("--opset and --static-shapes go with --onnx or --benchmark: add --onnx")
    return JobOptions(
        model=args.model,
        weights=args.weights,
        input_shapes=tuple(args.input_shape) if args.input_shape else None,
        input_dtype=args.input_dtype,
        config=config,
        onnx=OnnxConfig(args.opset, not args.static_shapes, args.atol) if args.onnx or bench else None,
        bench=bench,
        auto=auto,
        distill=_distill_job(args),
        plan=args.plan,
        calibrate=_calibrate_job(args),
    )


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
    """What `convert inspect` compares, by column label: separable, and grouped when --groups is given."""
    configs = {"separable": convert_config(args, target="separable", groups=None, pointwise=True)}
    if args.groups:
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
    )


def output_dir(args: argparse.Namespace, target: str) -> Path:
    """-o, or a folder named after the model and the target: next to a model file, or here for a factory."""
    if args.output is not None:
        return args.output
    path = Path(args.model)
    if path.exists():
        return path.with_name(f"{path.stem}-{target}")
    return Path(f"{args.model.rpartition(':')[2].rpartition('.')[2]}-{target}")


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


def _calibrate_job(args: argparse.Namespace) -> CalibrateJob | None:
    """The --calibrate settings; None without --calibrate (then --calibration-samples may not be given)."""
    if not args.calibrate:
        if args.calibration_samples is not None:
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
