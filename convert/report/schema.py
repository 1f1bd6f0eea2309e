"""report.json: the record of what a conversion did (its per-layer rows and totals; the sections of the stages in
`convert.report.sections`), as dataclasses, and their JSON form (both ways)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from rich.table import Table

from convert.report.markdown import report_markdown
from convert.report.sections import (
    AutoLayer,
    AutoReport,
    Benchmark,
    CalibrationReport,
    Candidate,
    DistillMetrics,
    DistillReport,
    Latency,
    ModelTiming,
    OnnxExport,
    OnnxReport,
    Parity,
    Placement,
    QuantCandidate,
    QuantizedModel,
    QuantizeReport,
    Speedup,
    TorchRuntime,
)
from convert.report.terminal import report_table

__all__ = [
    "REPORT_VERSION",
    "LayerReport",
    "Report",
    "Totals",
    # the sections, importable from here as well (report.json's whole schema in one import)
    "AutoLayer",
    "AutoReport",
    "Benchmark",
    "CalibrationReport",
    "Candidate",
    "DistillMetrics",
    "DistillReport",
    "Latency",
    "ModelTiming",
    "OnnxExport",
    "OnnxReport",
    "Parity",
    "Placement",
    "QuantCandidate",
    "QuantizeReport",
    "QuantizedModel",
    "Speedup",
    "TorchRuntime",
]

REPORT_VERSION = 1  # bumped when a field of report.json changes meaning or goes away


@dataclasses.dataclass
class LayerReport:
    """One convolution: what it was, what it became, at what cost and error."""

    name: str  # module path (or weight path for functional convs)
    op: str  # Conv2d, F.conv2d, aten.conv2d, ...
    status: str  # "converted" | "skipped"
    reason: str | None  # why skipped, or a note on a converted layer (e.g. rank clamped)
    in_channels: int | None
    out_channels: int | None
    kernel: list[int] | None
    stride: list[int] | None
    dilation: list[int] | None
    output_shape: list[int] | None  # at the first call site, on the example input
    receptive_field: list[int] | None  # input positions seen by one output position (None on the module walk)
    calls: int  # call sites of this conv on the example input (converted once, used at each)
    rank: int | None  # filters per group in the first conv
    full_rank: int | None  # the rank at which the conversion is exact (None for the plain grouped form)
    groups: int | None  # groups of the first conv (C_in for depthwise)
    params_before: int
    params_after: int
    macs_before: int  # multiply-accumulates on the example input, all call sites
    macs_after: int
    weight_rel_error: float | None  # ||W - W_hat||_F / ||W||_F
    # Calibrated conversions: the layer's output rel. error on the calibration inputs (its inputs in the model
    # converted so far, against the original conv's output in the original model), with the weight-SVD factors and
    # with the calibrated ones (None: not calibrated)
    calibration_error_before: float | None = None
    calibration_error_after: float | None = None


@dataclasses.dataclass
class Totals:
    """Whole-model figures; MACs counted by torch's FlopCounterMode (conv, linear and matmul ops)."""

    params_before: int  # all parameters of the model
    params_after: int
    macs_before: int  # on the example input
    macs_after: int
    converted: int  # convs converted
    skipped: int  # convs found and left as they were


@dataclasses.dataclass
class Report:
    """The record of one conversion; `to_json` is the report.json contract."""

    target: str  # separable | grouped
    trace: str  # fx | export | fx-leaves | module-walk
    trace_notes: list[str]  # why earlier trace paths were not used, and what the rewrite turned into graphs
    options: dict[str, Any]  # the ConvertConfig fields
    input_shapes: list[list[int]]
    input_dtype: str
    layers: list[LayerReport]
    totals: Totals
    output_rel_error: float  # ||y_converted - y_original|| / ||y_original|| on the example input, in eval mode
    seconds: dict[str, float]  # wall time per stage
    versions: dict[str, str]
    version: int = REPORT_VERSION
    # the same in train mode (batch statistics; dropout with the same seed); None: the model cannot run in train
    # mode on the example input (trace_notes says why)
    train_output_rel_error: float | None = None
    onnx: OnnxReport | None = None  # the ONNX exports and their parity (--onnx)
    benchmark: Benchmark | None = None  # latency on the benchmark's runtime, original vs converted (--benchmark)
    auto: AutoReport | None = None  # how --to auto chose each layer's form, and the predicted speedup
    distill: DistillReport | None = None  # fine-tuning against the original model (--distill)
    quantize: QuantizeReport | None = None  # INT8 versions of both ONNX files, and their accuracy check (--quantize)
    placement: Placement | None = None  # where the service ran the job (None: run here, by the library or the CLI)
    calibration: CalibrationReport | None = None  # the factors fitted to real inputs (--calibrate)
    # why model.pt was not written: torch.save refused the model (e.g. weight_norm's parametrizations, a hook that
    # is a local function); plan.json + model.safetensors load it (convert.apply_plan). None: it was written
    model_pt_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """report.json's content: plain dicts, lists and numbers."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The inverse of `to_dict` (e.g. a report.json read back, or received from the service)."""
        return _build(cls, data)

    def to_json(self) -> str:
        """report.json's text."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """report.md's text (`convert.report.markdown`)."""
        return report_markdown(self)

    def table(self) -> Table:
        """The per-layer table for the terminal (`convert.report.terminal`)."""
        return report_table(self)


def _build(kind: Any, value: Any) -> Any:
    """`value` (from JSON) as an instance of the annotated type `kind`: nested report dataclasses, their lists,
    and optional fields; anything else is kept as it is."""
    if value is None:
        return None
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(
            **{f.name: _build(hints[f.name], value[f.name]) for f in dataclasses.fields(kind) if f.name in value}
        )
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(kind) if dataclasses.is_dataclass(arg)]
        return _build(inner[0], value) if inner else value
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return [_build(item, element) for element in value]
    return value
