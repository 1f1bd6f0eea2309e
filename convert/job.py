"""One whole conversion job, from options to an output folder: what the CLI and the service's workers both run.

load -> example inputs -> convert -> [distill] -> save (model.pt, reports, ONNX files, benchmark), atomically.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from convert.auto import AutoConfig, plan_for_speed
from convert.bench import BenchConfig
from convert.config import ConvertConfig
from convert.errors import ConvertError
from convert.load import LoadedModel, load_model, make_inputs
from convert.onnx_export import OnnxConfig
from convert.pipeline import convert_model
from convert.report import Report
from convert.save import check_save_options, save_result

Progress = Callable[[str, float], None]  # (what is running, fraction of the whole job done)
Warn = Callable[[str], None]  # one-line warnings for the user (e.g. that loading a pickle runs code)

# Share of the progress bar taken by loading, and by converting (the rest is saving: export and benchmark).
_LOAD_SHARE = 0.05
_CONVERT_SHARE = {"plain": 0.9, "onnx": 0.4, "benchmark": 0.25}


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
    # Placeholder for the distillation settings (--distill DATA, --steps, --epochs, --batch-size, --lr, --val,
    # --seed, --feature-weight), wired in when distillation lands; must be None until then.
    distill: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.config.target == "auto" and self.auto is None:
            object.__setattr__(self, "auto", AutoConfig())
        if self.auto is not None and self.config.target != "auto":
            raise ConvertError("latency-aware planning settings go with --to auto")
        if self.auto is not None and self.bench is None:  # the planned model is measured end to end
            object.__setattr__(self, "bench", BenchConfig(device=self.auto.device, threads=self.auto.threads))
        if self.bench is not None and self.onnx is None:
            object.__setattr__(self, "onnx", OnnxConfig())  # the benchmark times the ONNX files
        # DISTILL: the one place that refuses distillation settings (the service answers INVALID_ARGUMENT with
        # this message). Remove it when run_job's distill step below is wired in.
        if self.distill is not None:
            raise ConvertError("distillation is not available in this build: drop the distill settings")

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
            distill=data.get("distill"),
        )


def run_job(
    options: JobOptions,
    outdir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    on_warning: Warn | None = None,
) -> Report:
    """Load the model, convert it, and write the results into `outdir` (replaced as a whole, atomically).

    Args:
        options: the model source and every conversion, export and benchmark setting.
        outdir: the folder to write (model.pt, report.json, report.md; the ONNX files and benchmark.png with
            `options.onnx` / `options.bench`).
        progress: called with (what is running, fraction of the whole job done).
        on_warning: receives one-line warnings for the user.

    Returns:
        The Report, as written to `outdir/report.json`.

    Raises:
        ConvertError: for a bad model, bad options or an unusable `outdir`, before anything is written.
        ParityError: when ONNX Runtime does not match PyTorch (files kept in `OUTDIR.failed-parity/`).
    """
    notify = progress or (lambda _what, _fraction: None)
    onnx, bench = options.onnx, options.bench
    check_save_options(outdir, None, onnx, bench)  # before the work, so a bad outdir or device costs nothing
    notify("load", 0.0)
    loaded = load_model(options.model, options.weights, on_warning=on_warning)
    inputs = example_inputs(loaded, options.input_shapes, options.input_dtype)
    check_save_options(outdir, inputs, onnx, bench)
    convert_end = _LOAD_SHARE + _CONVERT_SHARE["benchmark" if bench else "onnx" if onnx else "plain"]
    plan = None
    if options.auto is not None:  # measuring the candidates takes most of an auto job
        plan_end = _LOAD_SHARE + 0.7 * (convert_end - _LOAD_SHARE)
        plan = plan_for_speed(loaded.model, inputs, options.auto, progress=_span(notify, _LOAD_SHARE, plan_end))
    result = convert_model(
        loaded.model,
        inputs,
        options.config,
        exported=loaded.exported,
        plans=plan and plan.plans,
        progress=_span(notify, plan_end if plan else _LOAD_SHARE, convert_end),
    )
    if plan is not None:
        result.report.auto = plan.report
    # DISTILL: the distillation step goes here, between convert_model and save_result.
    save_result(
        result,
        outdir,
        original=loaded.model,
        example_inputs=inputs,
        onnx=onnx,
        benchmark=bench,
        progress=_span(notify, convert_end, 1.0),
    )
    notify("done", 1.0)
    return result.report


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
    raise ConvertError("the example input shape is unknown: add --input-shape, e.g. --input-shape 1,3,224,224")


def _span(notify: Progress, start: float, end: float) -> Progress:
    """A progress callback whose 0..1 fills [start, end] of the whole job's."""
    return lambda what, fraction: notify(what, start + (end - start) * min(max(fraction, 0.0), 1.0))


def output_files(report: Report) -> list[str]:
    """The files `run_job` wrote into its output folder for `report`, relative to it."""
    files = ["model.pt", "report.json", "report.md"]
    if report.onnx is not None:
        files += [report.onnx.original.path, report.onnx.converted.path]
    if report.benchmark is not None:
        files.append("benchmark.png")
    if report.auto is not None:
        files.append("auto.png")
    return files
