"""One whole conversion job, from options to an output folder: what the CLI and the service's workers both run.

load -> example inputs -> convert -> [distill] -> save (model.pt, reports, ONNX files, benchmark), atomically.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from convert.artifacts import atomic_dir, check_outdir, failed_parity_dir, keep_failed, write_conversion
from convert.auto import AutoConfig, LatencyPlanner
from convert.common import Progress, no_progress, span
from convert.conversion import Conversion
from convert.distill.config import DistillEvent, DistillProgress
from convert.distill.data import DistillData
from convert.distill.parallel import is_main_process
from convert.distill.trainer import distill_result
from convert.errors import ConvertError, ParityError, QuantizationError
from convert.forward import MODEL_DTYPES, cast
from convert.job_inputs import CalibrateJob, DistillJob, example_inputs, prepare_inputs, quantize_sources
from convert.job_placement import check_accelerator, checked_resources
from convert.load import load_model, make_inputs
from convert.report.schema import Placement, Report
from convert.runtime.bench import benchmark_conversion
from convert.runtime.config import BenchConfig
from convert.runtime.devices import resolve_device
from convert.runtime.export import OnnxConfig, export_conversion
from convert.runtime.int8 import quantize_conversion
from convert.runtime.parity import DEFAULT_ATOL, parity_message
from convert.runtime.quantize import QuantizeConfig, device_formats
from convert.surgery.apply import SavedPlanner, read_plan
from convert.surgery.config import ConvertConfig
from convert.surgery.pipeline import convert_model
from convert.surgery.plan import Planner

__all__ = [
    "CalibrateJob",  # from convert.job_inputs: the parts of JobOptions, importable beside it
    "DistillJob",
    "JobOptions",
    "preflight",
    "run_job",
    "Warn",
]

Warn = Callable[[str], None]  # one-line warnings for the user (e.g. that loading a pickle runs code)

# Share of the progress bar taken by loading, and by converting (the rest is saving: export and benchmark).
_LOAD_SHARE = 0.05
_CONVERT_SHARE = {"plain": 0.9, "onnx": 0.4, "benchmark": 0.25}


HALF_ATOL = 1e-2  # the parity tolerance of a float16 model (`model_dtype`) when none other is given


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
    # Export both models to ONNX and check them (None: no export). Implied by `bench` on ONNX Runtime.
    onnx: OnnxConfig | None = None
    # Time both models, as ONNX files on ONNX Runtime or as modules on PyTorch (None: no benchmark).
    bench: BenchConfig | None = None
    # Target "auto": what the latency-aware plan aims for and where it measures (default AutoConfig()).
    # Implies `bench` on the same runtime, device, threads and runtime settings.
    auto: AutoConfig | None = None
    # Fine-tune the converted model against the original (None: no distillation).
    distill: DistillJob | None = None
    # A plan.json of an earlier conversion: its forms at its layers, on this model's weights, instead of planning.
    plan: str | None = None
    # INT8 versions of both ONNX files, calibrated and checked (None: float only). Implies `bench` (the formats
    # are timed, and the four models compared); with target "auto", the plan is for the INT8 runtime.
    quantize: QuantizeConfig | None = None
    # Where a service on a Ray cluster (`convert serve --runner ray`) runs the job: on a node with this Ray
    # accelerator type (e.g. "H100", "A10G"; the job then takes one of its GPUs), and with these Ray custom
    # resources, as (name, amount) pairs (e.g. (("edge-cpu", 1.0),)). `run_job` itself runs where it is called.
    accelerator: str | None = None
    resources: tuple[tuple[str, float], ...] = ()
    # Keyword arguments of the factory (e.g. {"num_classes": 10}): Python literals, for a factory spec only.
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Fit the factors to real inputs, layer by layer (None: from the weights alone); quantization reads them too.
    calibrate: CalibrateJob | None = None
    # Per `input_shapes` entry, the forward parameter it is for (e.g. ("pixel_values",)); None: by position.
    input_names: tuple[str, ...] | None = None
    # Cast the model and its floating inputs to this dtype before converting (a key of convert.forward.MODEL_DTYPES;
    # the ONNX files follow); None: as loaded.
    model_dtype: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", checked_resources(self.resources))
        if self.input_names is not None and len(self.input_names) != len(self.input_shapes or ()):
            raise ConvertError("name every input or none: `input_names` go one per `input_shapes` entry")
        if self.model_dtype is not None and self.model_dtype not in MODEL_DTYPES:
            raise ConvertError(f"`model_dtype` {self.model_dtype!r} is not valid: use one of {', '.join(MODEL_DTYPES)}")
        if self.accelerator is not None:
            check_accelerator(self.accelerator)
        if self.calibrate is not None and not self.calibrate.data and self.distill is None:
            raise ConvertError("`calibrate` needs its data: give the inputs, or `distill` data to calibrate on")
        if self.plan is not None and self.config.target == "auto":
            raise ConvertError("give either a `plan` or `target`=auto, not both: the plan says every layer's form")
        if self.config.target == "auto" and self.auto is None:
            object.__setattr__(self, "auto", AutoConfig())
        if self.auto is not None and self.config.target != "auto":
            raise ConvertError("`auto` settings (latency-aware planning) go with `target`=auto")
        if self.auto is not None and self.quantize is not None and not self.auto.quantize:
            object.__setattr__(self, "auto", dataclasses.replace(self.auto, quantize=self.quantize.formats))
        if self.auto is not None and self.auto.quantize and self.quantize is None:
            raise ConvertError("`auto` plans for INT8 formats with `quantize` only: set `quantize`, or drop them")
        if self.auto is not None and self.bench is None:  # the planned model is measured end to end
            default = BenchConfig()  # the benchmark's own length, on the plan's runtime
            bench = dataclasses.replace(self.auto.bench(), warmup=default.warmup, runs=default.runs)
            object.__setattr__(self, "bench", bench)
        if self.quantize is not None and self.bench is None:  # the formats are timed where the models will run
            object.__setattr__(self, "bench", BenchConfig())
        if self.quantize is not None and self.bench.runtime != "ort":
            raise ConvertError("`quantize` writes ONNX files for ONNX Runtime: use `runtime`=ort")
        if self.bench is not None and self.bench.runtime == "ort" and self.onnx is None:
            object.__setattr__(self, "onnx", OnnxConfig())  # ONNX Runtime times the ONNX files
        if self.model_dtype == "bfloat16" and self.onnx is not None:
            raise ConvertError(
                "ONNX Runtime has no bfloat16 convolution: use `model_dtype`=float16 for ONNX files, or drop `onnx`"
            )
        if self.model_dtype == "float16" and self.onnx is not None and self.onnx.atol == DEFAULT_ATOL:
            # float16 rounds at ~1e-3: the float32 default would fail every half-precision export
            object.__setattr__(self, "onnx", dataclasses.replace(self.onnx, atol=HALF_ATOL))

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
        onnx, bench, auto, quantize = data.get("onnx"), data.get("bench"), data.get("auto"), data.get("quantize")
        if bench is not None:
            bench = {**bench, "batch_sizes": tuple(bench["batch_sizes"])}
        if auto is not None:
            auto = {**auto, "quantize": tuple(auto.get("quantize", ()))}
        if quantize is not None:
            calibration = quantize.get("calibration")
            quantize = {
                **quantize,
                "calibration": None if calibration is None else tuple(calibration),
                "formats": tuple(quantize["formats"]),
            }
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
            quantize=None if quantize is None else QuantizeConfig(**quantize),
            accelerator=data.get("accelerator"),
            resources=tuple((name, amount) for name, amount in data.get("resources", ())),
            model_args=dict(data.get("model_args") or {}),
            calibrate=None if data.get("calibrate") is None else CalibrateJob.from_dict(data["calibrate"]),
            input_names=None if data.get("input_names") is None else tuple(data["input_names"]),
            model_dtype=data.get("model_dtype"),
        )


def run_job(
    options: JobOptions,
    outdir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    on_warning: Warn | None = None,
    on_event: DistillProgress | None = None,
    placement: Placement | None = None,
) -> Report:
    """Load the model, convert it, and write the results into `outdir` (as a whole, atomically).

    The stages, in order: preflight (every refusal that needs no work) -> load -> convert (its planner: uniform,
    or latency-aware for target "auto") -> [distill] -> [export + parity] -> [INT8 quantization + its accuracy
    check] -> [benchmark] -> write.

    Args:
        options: the model source and every conversion, export and benchmark setting.
        outdir: the folder to write (see `convert.artifacts.FILES`).
        overwrite: replace the results of an earlier run in `outdir` (implied by a distillation's `resume`,
            which continues them); without it they are refused before any work.
        progress: called with (what is running, fraction of the whole job done).
        on_warning: receives one-line warnings for the user.
        on_event: receives each distillation event (start, step, eval, end); raising KeyboardInterrupt from it
            stops the distillation cleanly, keeping the best weights so far.
        placement: where the job runs, for the report (the service's workers say; None: here).

    Returns:
        The Report, as written to `outdir/report.json`.

    Raises:
        ConvertError: for a bad model, bad options, an unusable `outdir` or earlier results there without
            `overwrite`, before anything is written.
        ParityError: when ONNX Runtime does not match PyTorch (files kept in `OUTDIR.failed-parity/`).
        QuantizationError: when no INT8 format is within `max_quant_error` of float (files kept there too).
    """
    notify = progress or no_progress
    overwrite = _may_replace(options, overwrite)
    preflight(options, outdir, overwrite)  # before the work, so a bad outdir or device costs nothing
    notify("load", 0.0)
    loaded = load_model(options.model, options.weights, on_warning=on_warning, model_args=options.model_args)
    inputs = example_inputs(loaded, options.input_shapes, options.input_dtype, options.input_names)
    if options.model_dtype is not None:
        loaded.model, inputs = cast(loaded.model, inputs, options.model_dtype)
    _check_static_batch(inputs, options.onnx, options.bench)
    prepared = prepare_inputs(options, loaded, inputs, outdir)  # bad data fails before any work
    convert_end = _LOAD_SHARE + _CONVERT_SHARE["benchmark" if options.bench else "onnx" if options.onnx else "plain"]
    conversion = convert_model(
        loaded.model,
        inputs,
        options.config,
        planner=_planner(options),
        exported=loaded.exported,
        calibration=prepared.calibration,
        progress=span(notify, _LOAD_SHARE, convert_end),
    )
    _warn_if_nothing_converted(conversion.report, on_warning)
    if (distill := prepared.distill) is not None:
        conversion = distill_result(
            conversion,
            loaded.model,
            distill.data,
            distill.config,
            progress=_distill_events(notify, on_event),
            checkpoint=distill.checkpoint,
        )
        if not is_main_process():
            return conversion.report  # a torchrun worker: rank 0 writes OUTDIR
    if placement is not None:
        conversion = dataclasses.replace(conversion, report=dataclasses.replace(conversion.report, placement=placement))
    _write(conversion, outdir, overwrite, options, prepared.quantize, span(notify, convert_end, 1.0))
    notify("done", 1.0)
    return conversion.report


def _warn_if_nothing_converted(report: Report, on_warning: Warn | None) -> None:
    """A run that changes nothing is told so: no standard conv at all, or every one skipped (with the first reason)."""
    if report.totals.converted or on_warning is None:
        return
    if not report.layers:
        on_warning(
            "the model has no convolution (Conv1d/2d/3d, ConvTranspose, or F.conv* on its own weights): nothing was "
            "converted, the output is the model as it was"
        )
        return
    first = report.layers[0]
    on_warning(
        f"no conv was converted: all {len(report.layers)} were skipped (e.g. {first.name}: {first.reason}); "
        "report.md gives each one's reason"
    )


def _planner(options: JobOptions) -> Planner | None:
    """The job's planner: a saved plan's, the latency-aware one for target "auto", else the uniform default."""
    if options.plan is not None:
        return SavedPlanner(options.plan)
    return None if options.auto is None else LatencyPlanner(options.auto)


def preflight(options: JobOptions, outdir: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Every refusal that is known from the options alone, before any work: the output folders, a plan that cannot
    be read, a device that cannot run here, batch sizes that static shapes rule out.

    Raises:
        ConvertError: naming the option to change.
    """
    check_outdir(outdir, _may_replace(options, overwrite))
    if options.plan is not None:
        read_plan(options.plan)
    if options.onnx is not None:  # an earlier failed run's files are there for a look, not to keep: replaced
        check_outdir(failed_parity_dir(outdir), overwrite=True)
    if options.bench is not None:
        device = resolve_device(options.bench.device)  # refuses cuda where torch sees no GPU
        if options.bench.runtime == "ort":
            provider = device.require_provider()
            if options.quantize is not None:
                device_formats(options.quantize.formats, provider)
    if options.quantize is not None:
        _check_quantize(options)
    if options.input_shapes:
        _check_static_batch(make_inputs(options.input_shapes[:1], options.input_dtype), options.onnx, options.bench)


def _may_replace(options: JobOptions, overwrite: bool) -> bool:
    """Whether earlier results in OUTDIR may be replaced: asked for, or a resumed distillation continuing them."""
    return overwrite or (options.distill is not None and options.distill.resume)


def _check_static_batch(inputs: Sequence[torch.Tensor], onnx: OnnxConfig | None, bench: BenchConfig | None) -> None:
    """Static shapes fix the batch at the example input's: ONNX Runtime's batch sizes must be that one."""
    if onnx is None or onnx.dynamic_batch or bench is None or bench.runtime != "ort" or not inputs:
        return
    batch = int(inputs[0].shape[0])
    if set(bench.batch_sizes) != {batch}:
        raise ConvertError(
            f"`dynamic_batch`=False fixes the batch at {batch} (the example input's), so `batch_sizes`="
            f"{','.join(map(str, bench.batch_sizes))} cannot run: use `batch_sizes`={batch}, "
            "or drop `dynamic_batch`=False"
        )


def _write(
    conversion: Conversion,
    outdir: str | os.PathLike[str],
    overwrite: bool,
    options: JobOptions,
    calibration: DistillData | None,
    notify: Progress,
) -> None:
    """The export, parity check, quantization and benchmark stages, then the files, all into one folder renamed
    into place."""
    # where each stage ends, as a share of this part of the job
    ends = (0.4, 0.7, 1.0) if options.quantize else (0.5, 0.5, 1.0) if options.bench else (1.0, 1.0, 1.0)
    with atomic_dir(outdir, overwrite) as staging:
        if options.onnx is not None:
            onnx = export_conversion(conversion, staging, options.onnx, span(notify, 0.0, ends[0]))
            exports = [onnx.original, onnx.converted]
            if not all(export.passed for export in exports):
                write_conversion(conversion, staging)  # everything, for inspection
                failed = keep_failed(staging, outdir)
                raise ParityError(f"{parity_message(exports, onnx.atol)}; the files are kept in {failed}/")
        if options.quantize is not None and calibration is not None:
            try:
                quantize_conversion(
                    conversion, staging, options.quantize, calibration, options.bench, span(notify, ends[0], ends[1])
                )
            except QuantizationError as e:
                write_conversion(conversion, staging)
                failed = keep_failed(staging, outdir)
                raise QuantizationError(f"{e}; the files are kept in {failed}/") from e
        if options.bench is not None:
            start = ends[1] if options.onnx is not None else 0.0
            benchmark_conversion(conversion, staging, options.bench, span(notify, start, 1.0))
        write_conversion(conversion, staging)


def _check_quantize(options: JobOptions) -> None:
    """The refusals of `quantize` known from the options alone."""
    if quantize_sources(options) is None and options.distill is None:
        raise ConvertError(
            "`quantize` calibrates on real inputs: set `calibration` (a folder of images or a tensor file of a "
            "hundred or more inputs; synthetic for a trial only), or `distill` (its inputs calibrate)"
        )
    if options.model_dtype not in (None, "float32"):
        raise ConvertError(f"INT8 quantization starts from a float32 model: drop `model_dtype`={options.model_dtype}")
    if options.input_dtype not in ("float32", "int64"):
        raise ConvertError(
            f"INT8 quantization starts from a float32 model: use `input_dtype`=float32, not {options.input_dtype}"
        )


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
