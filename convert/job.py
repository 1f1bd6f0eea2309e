"""One whole conversion job, from options to an output folder: what the CLI and the service's workers both run.

load -> example inputs -> convert -> [distill] -> save (model.pt, reports, ONNX files, benchmark), atomically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from convert.artifacts import (
    DISTILL_CHECKPOINT,
    atomic_dir,
    check_outdir,
    failed_parity_dir,
    keep_failed,
    write_conversion,
)
from convert.auto import AutoConfig, LatencyPlanner
from convert.common import Progress, no_progress, span
from convert.conversion import Conversion
from convert.distill.config import DistillConfig, DistillEvent, DistillProgress
from convert.distill.data import DistillData, image_transform, input_names, load_data
from convert.distill.parallel import is_main_process
from convert.distill.state import load_checkpoint
from convert.distill.trainer import check_distill_options, distill_result
from convert.errors import ConvertError, ParityError
from convert.load import LoadedModel, load_model, make_inputs
from convert.report.schema import Report
from convert.runtime.bench import BenchConfig, benchmark_conversion
from convert.runtime.devices import resolve_device
from convert.runtime.export import OnnxConfig, export_conversion
from convert.runtime.parity import parity_message
from convert.surgery.apply import SavedPlanner, read_plan
from convert.surgery.calibrate import DEFAULT_SAMPLES, Calibration, CalibrationConfig, prepare_calibration
from convert.surgery.config import ConvertConfig
from convert.surgery.pipeline import convert_model
from convert.surgery.plan import Planner

__all__ = ["CalibrateJob", "DistillJob", "example_inputs", "JobOptions", "preflight", "run_job", "Warn"]

Warn = Callable[[str], None]  # one-line warnings for the user (e.g. that loading a pickle runs code)

# Share of the progress bar taken by loading, and by converting (the rest is saving: export and benchmark).
_LOAD_SHARE = 0.05
_CONVERT_SHARE = {"plain": 0.9, "onnx": 0.4, "benchmark": 0.25}


@dataclasses.dataclass(frozen=True)
class DistillJob:
    """--distill: where the training inputs come from, and how to train."""

    # "synthetic", a folder of images, or a tensor file shaped (N, ...); several: a file per model input.
    data: tuple[str, ...]
    config: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    # Validation inputs in the same forms; None: a split of `data` is held out.
    val: tuple[str, ...] | None = None
    # Image normalisation per channel; None: ImageNet's for 3 channels, else 0.5 (see convert.distill.data).
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    # Continue from OUTDIR/distill-checkpoint.pt, written by an earlier run that stopped.
    resume: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillJob:
        tuples = {
            k: None if data.get(k) is None else tuple(data[k]) for k in ("data", "val", "image_mean", "image_std")
        }
        return cls(**{**data, **tuples, "config": DistillConfig(**data.get("config", {}))})


@dataclasses.dataclass(frozen=True)
class CalibrateJob:
    """--calibrate: the unlabeled inputs that calibration (and quantization) fits to, and how many of them."""

    # "synthetic", a folder of images, or a tensor file shaped (N, ...); several: a file per model input.
    # Empty: the distillation's training data (`distill`).
    data: tuple[str, ...] = ()
    samples: int = DEFAULT_SAMPLES  # at most this many inputs (a seeded random choice of a larger source)

    def __post_init__(self) -> None:
        CalibrationConfig(self.data, samples=self.samples)  # its checks

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrateJob:
        return cls(**{**data, "data": tuple(data.get("data", ()))})


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """Everything one conversion job needs. Override fields with `dataclasses.replace`."""

    # A factory spec `package.module:callable`, or the path of a .pt2 archive or a whole-model pickle.
    model: str
    # A state dict for a factory-built model (.safetensors, or a torch.save file read with weights_only=True).
    weights: str | None = None
    # Example input shapes, one per positional input; None for the .pt2 archive's stored example inputs.
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    # dtype of the example inputs (a key of convert.load.DTYPES).
    input_dtype: str = "float32"
    # What to convert and into what.
    config: ConvertConfig = dataclasses.field(default_factory=ConvertConfig)
    # Export both models to ONNX and check them (None: no export). Implied by `bench`.
    onnx: OnnxConfig | None = None
    # Time both ONNX files on ONNX Runtime (None: no benchmark).
    bench: BenchConfig | None = None
    # Target "auto": what the latency-aware plan aims for and where it measures (default AutoConfig()).
    # Implies `bench` on the same device and threads.
    auto: AutoConfig | None = None
    # Fine-tune the converted model against the original (None: no distillation).
    distill: DistillJob | None = None
    # A plan.json of an earlier conversion: its forms at its layers, on this model's weights, instead of planning.
    plan: str | None = None
    # Fit the factors to real inputs, layer by layer (None: from the weights alone); quantization reads them too.
    calibrate: CalibrateJob | None = None

    def __post_init__(self) -> None:
        if self.calibrate is not None and not self.calibrate.data and self.distill is None:
            raise ConvertError("`calibrate` needs its data: give the inputs, or `distill` data to calibrate on")
        if self.plan is not None and self.config.target == "auto":
            raise ConvertError("give either a `plan` or `target`=auto, not both: the plan says every layer's form")
        if self.config.target == "auto" and self.auto is None:
            object.__setattr__(self, "auto", AutoConfig())
        if self.auto is not None and self.config.target != "auto":
            raise ConvertError("`auto` settings (latency-aware planning) go with `target`=auto")
        if self.auto is not None and self.bench is None:  # the planned model is measured end to end
            object.__setattr__(self, "bench", BenchConfig(device=self.auto.device, threads=self.auto.threads))
        if self.bench is not None and self.onnx is None:
            object.__setattr__(self, "onnx", OnnxConfig())  # the benchmark times the ONNX files

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (the service stores them with each job)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobOptions:
        """The inverse of `to_dict`.

        Raises:
            ConvertError: for a field value the configs refuse.
        """
        shapes = data.get("input_shapes")
        onnx, bench, auto = data.get("onnx"), data.get("bench"), data.get("auto")
        if bench is not None:
            bench = {**bench, "batch_sizes": tuple(bench["batch_sizes"])}
        return cls(
            model=data["model"],
            weights=data.get("weights"),
            input_shapes=None if shapes is None else tuple(tuple(s) for s in shapes),
            input_dtype=data.get("input_dtype", "float32"),
            config=ConvertConfig(**data.get("config", {})),
            onnx=None if onnx is None else OnnxConfig(**onnx),
            bench=None if bench is None else BenchConfig(**bench),
            auto=None if auto is None else AutoConfig(**auto),
            distill=None if data.get("distill") is None else DistillJob.from_dict(data["distill"]),
            plan=data.get("plan"),
            calibrate=None if data.get("calibrate") is None else CalibrateJob.from_dict(data["calibrate"]),
        )


def run_job(
    options: JobOptions,
    outdir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    on_warning: Warn | None = None,
    on_event: DistillProgress | None = None,
) -> Report:
    """Load the model, convert it, and write the results into `outdir` (replaced as a whole, atomically).

    The stages, in order: preflight (every refusal that needs no work) -> load -> convert (its planner: uniform,
    or latency-aware for target "auto") -> [distill] -> [export + parity] -> [benchmark] -> write.

    Args:
        options: the model source and every conversion, export and benchmark setting.
        outdir: the folder to write (see `convert.artifacts.FILES`).
        progress: called with (what is running, fraction of the whole job done).
        on_warning: receives one-line warnings for the user.
        on_event: receives each distillation event (start, step, eval, end); raising KeyboardInterrupt from it
            stops the distillation cleanly, keeping the best weights so far.

    Returns:
        The Report, as written to `outdir/report.json`.

    Raises:
        ConvertError: for a bad model, bad options or an unusable `outdir`, before anything is written.
        ParityError: when ONNX Runtime does not match PyTorch (files kept in `OUTDIR.failed-parity/`).
    """
    notify = progress or no_progress
    preflight(options, outdir)  # before the work, so a bad outdir or device costs nothing
    notify("load", 0.0)
    loaded = load_model(options.model, options.weights, on_warning=on_warning)
    inputs = example_inputs(loaded, options.input_shapes, options.input_dtype)
    _check_static_batch(inputs, options.onnx, options.bench)
    distill = _prepare_distill(options.distill, loaded, inputs, outdir)  # bad data fails before any work
    calibration = _prepare_calibration(options, loaded, inputs)
    convert_end = _LOAD_SHARE + _CONVERT_SHARE["benchmark" if options.bench else "onnx" if options.onnx else "plain"]
    conversion = convert_model(
        loaded.model,
        inputs,
        options.config,
        planner=_planner(options),
        exported=loaded.exported,
        calibration=calibration,
        progress=span(notify, _LOAD_SHARE, convert_end),
    )
    if distill is not None:
        data, config, checkpoint = distill
        conversion = distill_result(
            conversion, loaded.model, data, config, progress=_distill_events(notify, on_event), checkpoint=checkpoint
        )
        if not is_main_process():
            return conversion.report  # a torchrun worker: rank 0 writes OUTDIR
    _write(conversion, outdir, options, span(notify, convert_end, 1.0))
    notify("done", 1.0)
    return conversion.report


def _planner(options: JobOptions) -> Planner | None:
    """The job's planner: a saved plan's, the latency-aware one for target "auto", else the uniform default."""
    if options.plan is not None:
        return SavedPlanner(options.plan)
    return None if options.auto is None else LatencyPlanner(options.auto)


def preflight(options: JobOptions, outdir: str | os.PathLike[str]) -> None:
    """Every refusal that is known from the options alone, before any work: the output folders, a plan that cannot
    be read, a device that cannot run here, batch sizes that static shapes rule out.

    Raises:
        ConvertError: naming the option to change.
    """
    check_outdir(outdir)
    if options.plan is not None:
        read_plan(options.plan)
    if options.onnx is not None:
        check_outdir(failed_parity_dir(outdir))
    if options.bench is not None:
        resolve_device(options.bench.device).require_provider()
    if options.input_shapes:
        _check_static_batch(make_inputs(options.input_shapes[:1], options.input_dtype), options.onnx, options.bench)


def _check_static_batch(inputs: Sequence[torch.Tensor], onnx: OnnxConfig | None, bench: BenchConfig | None) -> None:
    """Static shapes fix the batch at the example input's: the benchmark's batch sizes must be that one."""
    if onnx is None or onnx.dynamic_batch or bench is None or not inputs:
        return
    batch = int(inputs[0].shape[0])
    if set(bench.batch_sizes) != {batch}:
        raise ConvertError(
            f"`dynamic_batch`=False fixes the batch at {batch} (the example input's), so `batch_sizes`="
            f"{','.join(map(str, bench.batch_sizes))} cannot run: use `batch_sizes`={batch}, "
            "or drop `dynamic_batch`=False"
        )


def _write(conversion: Conversion, outdir: str | os.PathLike[str], options: JobOptions, notify: Progress) -> None:
    """The export, parity check and benchmark stages, then the files, all into one folder renamed into place."""
    with atomic_dir(outdir) as staging:
        if options.onnx is not None:
            onnx = export_conversion(
                conversion, staging, options.onnx, span(notify, 0.0, 0.5 if options.bench else 1.0)
            )
            exports = [onnx.original, onnx.converted]
            if not all(export.passed for export in exports):
                write_conversion(conversion, staging)  # everything, for inspection
                failed = keep_failed(staging, outdir)
                raise ParityError(f"{parity_message(exports, onnx.atol)}; the files are kept in {failed}/")
        if options.bench is not None:
            benchmark_conversion(conversion, staging, options.bench, span(notify, 0.5, 1.0))
        write_conversion(conversion, staging)


def example_inputs(
    loaded: LoadedModel, shapes: Sequence[Sequence[int]] | None, dtype: str = "float32"
) -> tuple[torch.Tensor, ...]:
    """Random example inputs of `shapes`, else the ones stored with the model (a .pt2 archive's).

    Raises:
        ConvertError: when neither is there.
    """
    if shapes:
        return make_inputs(shapes, dtype)
    if loaded.example_inputs is not None:
        return loaded.example_inputs
    raise ConvertError("the example input shape is unknown: set `input_shapes`, e.g. `input_shapes`=1,3,224,224")


def _prepare_distill(
    job: DistillJob | None, loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], outdir: str | os.PathLike[str]
) -> tuple[DistillData, DistillConfig, dict | None] | None:
    """The data, options and checkpoint of a distillation, all checked; None without one."""
    if job is None:
        return None
    transform = None
    if job.image_mean is not None or job.image_std is not None:
        if inputs[0].dim() != 4:
            raise ConvertError("`image_mean` and `image_std` go with a folder of images and an N,C,H,W input")
        transform = image_transform(inputs[0].shape, job.image_mean, job.image_std)
    checkpoint = load_checkpoint(Path(outdir) / DISTILL_CHECKPOINT) if job.resume else None
    data = load_data(
        list(job.data),
        inputs,
        val=None if job.val is None else list(job.val),
        input_names=input_names(loaded.model),
        transform=transform,
        seed=job.config.seed,
    )
    check_distill_options(job.config, data)
    return data, job.config, checkpoint


def _prepare_calibration(
    options: JobOptions, loaded: LoadedModel, inputs: tuple[torch.Tensor, ...]
) -> Calibration | None:
    """The calibration inputs, loaded and checked (the distillation's training data when `calibrate` names none);
    None without calibration."""
    job = options.calibrate
    if job is None:
        return None
    data = job.data or (options.distill.data if options.distill is not None else ())
    config = CalibrationConfig(list(data) if len(data) > 1 else data[0], samples=job.samples)
    return prepare_calibration(config, loaded.model, inputs)


def _distill_events(notify: Progress, on_event: DistillProgress | None) -> DistillProgress:
    """Distillation events as progress lines (and passed on to `on_event`)."""

    def handle(event: DistillEvent) -> None:
        if event.kind == "step" and event.total:
            eta = time.strftime("%H:%M:%S", time.gmtime(event.eta_seconds or 0))
            notify(
                f"distilling: step {event.step}/{event.total}, loss {event.loss:.4g}, ETA {eta}",
                event.step / event.total,
            )
        if on_event is not None:
            on_event(event)

    return handle
