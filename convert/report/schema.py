"""What a conversion changed, per layer and in total: dataclasses, and their JSON, Markdown and table forms."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from typing import Any

from rich.markup import escape
from rich.table import Table

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
    benchmark: Benchmark | None = None  # ONNX Runtime latency, original vs converted (--benchmark)
    auto: AutoReport | None = None  # how --to auto chose each layer's form, and the predicted speedup
    distill: DistillReport | None = None  # fine-tuning against the original model (--distill)
    calibration: CalibrationReport | None = None  # the factors fitted to real inputs (--calibrate)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """The inverse of `to_dict` (e.g. a report.json read back, or received from the service)."""
        return _build(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        """One line: counts, parameters, MACs and output error."""
        t = self.totals
        return (
            f"{t.converted} converted, {t.skipped} skipped"
            f" | params {format_count(t.params_before)} -> {format_count(t.params_after)}"
            f" ({format_ratio(t.params_before, t.params_after)})"
            f" | MACs {format_count(t.macs_before)} -> {format_count(t.macs_after)}"
            f" ({format_ratio(t.macs_before, t.macs_after)})"
            f" | output rel. error {self.output_rel_error:.3g}"
        )

    def to_markdown(self) -> str:
        notes = f" ({'; '.join(self.trace_notes)})" if self.trace_notes else ""
        lines = [
            f"# Conversion report: {self.target}",
            "",
            f"- trace path: `{self.trace}`{notes}",
            f"- input: {', '.join('x'.join(map(str, s)) for s in self.input_shapes)} ({self.input_dtype})",
            f"- {self.summary()}",
            "",
            "| " + " | ".join(_COLUMNS) + " |",
            "|" + "---|" * len(_COLUMNS),
        ]
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in self.layers]
        sections = [s.to_markdown() for s in (self.auto,) if s is not None]
        sections += [self.calibration.to_markdown(self.layers)] if self.calibration is not None else []
        sections += [s.to_markdown() for s in (self.distill, self.onnx, self.benchmark) if s is not None]
        return "\n".join(lines) + "\n" + "".join("\n" + section for section in sections)

    def table(self) -> Table:
        """The per-layer table for the terminal (rich); skipped layers are dimmed."""
        table = Table(title=f"{self.target} via {self.trace}", caption=self.summary())
        for column in _COLUMNS:
            table.add_column(column, overflow="fold", justify="right" if column in _NUMERIC else "left")
        for row in self.layers:
            # escaped: names and notes (e.g. an --exclude regex) may hold [brackets] that rich reads as markup
            table.add_row(*map(escape, _cells(row)), style="dim" if row.status == "skipped" else None)
        return table


_COLUMNS = ("layer", "op", "kernel", "channels", "rank", "params", "MACs", "error", "note")
_NUMERIC = {"rank", "params", "MACs", "error"}


def _cells(row: LayerReport) -> list[str]:
    converted = row.status == "converted"
    rank = "" if row.rank is None else f"{row.rank}/{row.full_rank}" if row.full_rank else str(row.rank)
    return [
        row.name,
        row.op,
        "x".join(map(str, row.kernel or [])),
        f"{row.in_channels}->{row.out_channels}" if row.in_channels else "",
        f"{rank} g{row.groups}" if converted else "",
        f"{format_count(row.params_before)}->{format_count(row.params_after)}"
        if converted
        else format_count(row.params_before),
        format_ratio(row.macs_before, row.macs_after) if converted else "",
        "" if row.weight_rel_error is None else f"{row.weight_rel_error:.3f}",
        (row.reason or "") if converted else f"skipped: {row.reason}",
    ]


def format_count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def format_ratio(before: int, after: int) -> str:
    """'8.13x fewer' for a reduction, '1.12x more' for a growth."""
    if not before or not after:
        return "n/a"
    return f"{before / after:.2f}x fewer" if after <= before else f"{after / before:.2f}x more"


# --- calibration record --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CalibrationReport:
    """How the factors were fitted to real inputs, layer by layer (--calibrate)."""

    data: str  # what the calibration inputs are
    samples: int  # inputs used
    batch_size: int  # inputs per forward pass
    synthetic: bool  # random inputs: the factors fit them, not real data
    seconds: float  # wall time: both models' forward passes up to each layer, and the fits
    calibrated: int  # converted layers whose factors were fitted
    kept: int  # converted layers that kept their weight-SVD factors (their rows or `notes` say why)
    output_rel_error: float  # the converted model against the original on the calibration inputs, eval mode
    svd_output_rel_error: float  # the same with the weight-SVD factors, before calibration
    notes: list[str]

    def summary(self) -> str:
        """One line: the data, and the output error it brought down."""
        return (
            f"calibrated {self.calibrated} layers on {self.data} in {self.seconds:.1f} s: output rel. error on "
            f"them {self.svd_output_rel_error:.3g} (weight SVD) -> {self.output_rel_error:.3g}"
        )

    def to_markdown(self, layers: list[LayerReport]) -> str:
        lines = [
            "## Calibration",
            "",
            f"- {self.summary()}",
            f"- {self.samples} inputs in batches of {self.batch_size}; {self.kept} converted layers kept their SVD "
            "factors",
            *(f"- {note}" for note in self.notes),
            "",
            "| layer | output error, weight SVD | calibrated | weight error | note |",
            "|---|---:|---:|---:|---|",
        ]
        for row in layers:
            if row.calibration_error_before is None:
                continue
            after = "" if row.calibration_error_after is None else f"{row.calibration_error_after:.3g}"
            weight = "" if row.weight_rel_error is None else f"{row.weight_rel_error:.3g}"
            lines.append(
                f"| {row.name} | {row.calibration_error_before:.3g} | {after} | {weight} | {row.reason or ''} |"
            )
        return "\n".join(lines) + "\n"


# --- ONNX export and benchmark records -----------------------------------------------------------------------------


@dataclasses.dataclass
class Parity:
    """ONNX Runtime (CPU provider) against PyTorch on one input batch."""

    batch: int
    max_abs: float | None  # max |ORT - PyTorch| over all output elements (None when ORT failed)
    max_rel: float | None  # per output max |ORT - PyTorch| / max |PyTorch|; the worst output
    error: str | None = None  # why ONNX Runtime failed on this batch


@dataclasses.dataclass
class OnnxExport:
    """One .onnx file: how it was made, and how close ONNX Runtime comes to PyTorch on it."""

    path: str  # the .onnx file (in report.json: relative to the output folder)
    exporter: str  # "dynamo" (torch.onnx.export(dynamo=True)) or "torchscript" (the fallback)
    opset: int  # opset of the default ONNX domain in the file
    dynamic_batch: bool  # dim 0 of every input and output is symbolic
    external_data: bool  # weights in a side file next to the .onnx (models over 2 GB)
    notes: list[str]  # e.g. why the dynamo exporter was not used
    parity: list[Parity] = dataclasses.field(default_factory=list)  # example input, then another batch size
    passed: bool | None = None  # every parity figure within the tolerance (None: not checked)


@dataclasses.dataclass
class OnnxReport:
    """Both exports of a conversion."""

    atol: float  # max |ORT - PyTorch| allowed, relative to max |PyTorch| of each output
    original: OnnxExport
    converted: OnnxExport

    def to_markdown(self) -> str:
        lines = [
            "## ONNX export",
            "",
            f"ONNX Runtime (CPU) against PyTorch; tolerance {self.atol:g} (max |diff| / max |PyTorch| per output).",
            "",
            "| model | file | exporter | opset | batch | max abs diff | max rel diff | within tolerance |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, export in (("original", self.original), ("converted", self.converted)):
            for parity in export.parity:
                ok = "yes" if parity.error is None and parity.max_rel <= self.atol else "**no**"
                figures = f"{parity.max_abs:.3g} | {parity.max_rel:.3g}" if parity.error is None else "failed | failed"
                dims = "dynamic batch" if export.dynamic_batch else "static shapes"
                lines.append(
                    f"| {name} | `{export.path}` | {export.exporter} | {export.opset} ({dims}) | {parity.batch} "
                    f"| {figures} | {ok} |"
                )
        notes = [*self.original.notes, *self.converted.notes]
        notes += [p.error for e in (self.original, self.converted) for p in e.parity if p.error]
        lines += [""] + [f"- {note}" for note in notes] if notes else []
        return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Latency:
    """One model at one batch size; times in milliseconds, over the timed runs (warm-up runs dropped)."""

    batch: int
    runs: int
    p50: float  # percentiles by nearest rank: the smallest time that at least p% of the runs do not exceed
    p90: float
    p99: float
    mean: float
    min: float
    std: float  # population standard deviation
    throughput: float  # items per second: batch / mean latency


@dataclasses.dataclass
class ModelTiming:
    """One model's latency at each batch size, and the memory its session took."""

    name: str  # "original", "converted", or the file name
    path: str
    latency: list[Latency]  # one per batch size, in the order of Benchmark.batch_sizes
    rss_growth_bytes: int  # process RSS after loading and warming up at every batch size, minus before
    device_memory_bytes: int | None  # GPU memory taken by loading and warming up (CUDA), None on CPU


@dataclasses.dataclass
class Speedup:
    """A model against the baseline (the first model) at one batch size."""

    batch: int
    model: str
    baseline: str
    speedup: float  # baseline p50 / model p50
    mac_ratio: float | None  # baseline MACs / model MACs: the speedup if latency followed MACs (None: unknown)
    of_mac_ratio: float | None  # speedup / mac_ratio: 1 when every MAC saved became time saved


@dataclasses.dataclass
class Benchmark:
    """ONNX Runtime latency of several models, timed side by side (alternating run by run)."""

    device: str  # cpu | cuda | tensorrt: where the sessions ran, checked with session.get_providers()
    requested_device: str  # what was asked for (auto, cpu, cuda, tensorrt)
    reason: str  # why this device
    providers: list[str]  # session.get_providers(), in priority order
    provider_options: dict[str, dict[str, str]]  # per provider, the options the session applied
    ort_version: str
    threads: int | None  # intra-op threads of the CPU provider (None on a GPU: ORT's default)
    warmup: int  # untimed runs per model and batch size
    runs: int | None  # timed runs per model and batch size (None when timed by duration)
    duration: float | None  # seconds of timed runs per batch size (None when timed by runs)
    batch_sizes: list[int]
    models: list[ModelTiming]
    speedup: list[Speedup]  # every model after the first, at each batch size
    notes: list[str]  # e.g. TF32 convs, nodes that fell back to the CPU provider

    def rows(self) -> list[list[str]]:
        """Cells of the latency table: one row per model and batch size."""
        speedups = {(s.model, s.batch): s for s in self.speedup}
        rows = []
        for index, model in enumerate(self.models):
            for lat in model.latency:
                s = speedups.get((model.name, lat.batch))
                rows.append(
                    [
                        model.name,
                        str(lat.batch),
                        *(_ms(v) for v in (lat.p50, lat.p90, lat.p99, lat.mean, lat.min, lat.std)),
                        f"{lat.throughput:.4g}",
                        f"{model.rss_growth_bytes / 2**20:.1f}",
                        "baseline" if index == 0 else f"{s.speedup:.2f}x" if s else "",
                        f"{s.mac_ratio:.2f}x" if s and s.mac_ratio else "",
                        f"{s.of_mac_ratio:.0%}" if s and s.of_mac_ratio else "",
                    ]
                )
        return rows

    def describe(self) -> str:
        """One line: where it ran, how, and with what."""
        threads = f", {self.threads} threads" if self.threads else ""
        timing = f"{self.runs} runs" if self.duration is None else f"{self.duration:g} s"
        return (
            f"ONNX Runtime {self.ort_version} on {self.device} ({self.reason}){threads}; "
            f"{self.warmup} warm-up + {timing} per batch size, models alternating run by run"
        )

    def to_markdown(self) -> str:
        lines = [
            "## Benchmark",
            "",
            f"{self.describe()}.",
            "",
            "| " + " | ".join(_BENCH_COLUMNS) + " |",
            "|---|" + "---:|" * (len(_BENCH_COLUMNS) - 1),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows()]
        lines += [""] + [f"- {note}" for note in self.notes] if self.notes else []
        return "\n".join(lines) + "\n"

    def table(self) -> Table:
        """The latency table for the terminal (rich)."""
        caption = "; ".join([self.describe(), *self.notes])
        table = Table(title="ONNX Runtime latency (ms)", caption=escape(caption))
        for column in _BENCH_COLUMNS:
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in self.rows():
            table.add_row(*map(escape, row))
        return table


_BENCH_COLUMNS = (
    "model",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "min ms",
    "std ms",
    "items/s",
    "RSS+ MiB",
    "speedup",
    "MAC ratio",
    "speedup / MAC ratio",
)


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def plot_benchmark(benchmark: Benchmark, path: str | os.PathLike[str]) -> None:
    """Write a PNG of median latency per batch size, one bar per model (whiskers: min to p90)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display, no global pyplot state
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5.0, 1.6 + 1.2 * len(benchmark.batch_sizes) * len(benchmark.models)), 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / len(benchmark.models)
    positions = range(len(benchmark.batch_sizes))
    for index, model in enumerate(benchmark.models):
        p50 = [lat.p50 for lat in model.latency]
        whiskers = [[lat.p50 - lat.min for lat in model.latency], [lat.p90 - lat.p50 for lat in model.latency]]
        bars = axes.bar(
            [x + (index - (len(benchmark.models) - 1) / 2) * width for x in positions],
            p50,
            width,
            yerr=whiskers,
            capsize=3,
            label=model.name,
        )
        axes.bar_label(bars, labels=[_ms(v) for v in p50], padding=2, fontsize=8)
    medians = [lat.p50 for model in benchmark.models for lat in model.latency]
    if max(medians) > 30 * min(medians):  # e.g. batch 1 and 64: linear bars would hide the small ones
        axes.set_yscale("log")
    axes.set_xticks(list(positions), [f"batch {b}" for b in benchmark.batch_sizes])
    axes.set_ylabel("latency, ms (median; whiskers min to p90)")
    speedups = ", ".join(f"b{s.batch}: {s.speedup:.2f}x" for s in benchmark.speedup)
    threads = f", {benchmark.threads} threads" if benchmark.threads else ""
    title = f"ONNX Runtime {benchmark.ort_version}, {benchmark.device}{threads}"
    axes.set_title(f"{title}\nspeedup {speedups}" if speedups else title, fontsize=10)
    axes.legend()
    axes.margins(y=0.15)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# --- latency-aware planning (--to auto) ------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    """One form a layer could take, with its measured cost and error."""

    label: str  # keep | separable rR | grouped gG rR
    groups: int | None  # of the first conv (None: keep)
    rank: int | None  # filters per group (None: keep)
    macs: int  # multiply-accumulates on the example input
    error: float  # relative error of the layer's output on its real input (0 for keep)
    output_error: float  # relative error of the model's output with this layer alone in this form (0 for keep)
    latency_ms: float  # median, as a one-layer ONNX model on the planned runtime


@dataclasses.dataclass
class AutoLayer:
    """The candidates of one conv and the one chosen."""

    name: str
    input_shape: list[int]
    candidates: list[Candidate]  # keep first
    chosen: int  # index into candidates


@dataclasses.dataclass
class AutoReport:
    """How `--to auto` planned: the budget, the per-layer choices, and the predicted speedup."""

    target_speedup: float
    max_error: float | None
    device: str  # the runtime the layers were timed on
    baseline_ms: float  # the original model end to end (median)
    fastest_ms: float  # the plan of every layer's fastest candidate, end to end (median)
    # predicted end-to-end ms = fixed_ms + scale * (sum of the chosen candidates' ms), fitted to the two above
    fixed_ms: float
    scale: float
    predicted_ms: float
    predicted_speedup: float  # baseline_ms / predicted_ms (the benchmark section has the measured one)
    layers: list[AutoLayer]
    # [predicted ms, predicted output error] along the trade-off curve; the predicted output error is
    # sqrt(sum over layers of output_error^2)
    frontier: list[list[float]]
    measured: int  # candidate latencies measured in this run
    cached: int  # candidate latencies read from the cache
    cache_dir: str
    notes: list[str]

    def to_markdown(self) -> str:
        lines = [
            "## Latency-aware plan (--to auto)",
            "",
            f"- target {self.target_speedup:g}x on {self.device}: predicted {self.predicted_speedup:.2f}x "
            f"({self.baseline_ms:.3g} ms -> {self.predicted_ms:.3g} ms; the fastest plan measured "
            f"{self.fastest_ms:.3g} ms; predicted = {self.fixed_ms:.3g} ms + {self.scale:.3g} x the layers' own ms)",
            f"- candidate latencies: {self.measured} measured, {self.cached} from the cache ({self.cache_dir})",
            *(f"- {note}" for note in self.notes),
            "",
            "| layer | input | chosen | ms before | ms after | layer error | model error | candidates |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for layer in self.layers:
            keep, chosen = layer.candidates[0], layer.candidates[layer.chosen]
            lines.append(
                f"| {layer.name} | {'x'.join(map(str, layer.input_shape))} | {chosen.label} | "
                f"{keep.latency_ms:.3g} | {chosen.latency_ms:.3g} | {chosen.error:.3g} | {chosen.output_error:.3g} | "
                f"{len(layer.candidates)} |"
            )
        return "\n".join(lines) + "\n"


def plot_auto(auto: AutoReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG of predicted latency against error for the plans the search visited, the chosen one marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ms, error = zip(*auto.frontier, strict=True) if auto.frontier else ((), ())
    axes.plot(ms, error, "o-", markersize=3, label="plans (Lagrangian sweep)")
    chosen = math.sqrt(sum(layer.candidates[layer.chosen].output_error ** 2 for layer in auto.layers))
    axes.plot([auto.predicted_ms], [chosen], "r*", markersize=12, label="chosen")
    axes.axvline(auto.baseline_ms / auto.target_speedup, color="gray", linestyle="--", label="budget")
    axes.axvline(auto.baseline_ms, color="black", linestyle=":", label="original")
    axes.set_xlabel(f"predicted latency, ms ({auto.device})")
    axes.set_ylabel("predicted output error (relative)")
    axes.set_title(f"--to auto: target {auto.target_speedup:g}x, predicted {auto.predicted_speedup:.2f}x", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


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


# --- distillation record -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DistillMetrics:
    """The student against the teacher on the validation inputs."""

    loss: float  # the output loss (feature matching not included)
    output_rel_error: float  # ||y_student - y_teacher|| / ||y_teacher|| over all output tensors
    top1_agreement: float | None  # share of inputs whose top class agrees (class-score outputs only, else None)


@dataclasses.dataclass
class DistillReport:
    """How the converted model (student) was fine-tuned to match the original (teacher)."""

    status: str  # completed | interrupted (Ctrl-C: best weights kept) | nan (loss not finite: last good weights kept)
    message: str  # one line on how it ended
    data: str  # the training inputs
    val_data: str  # the validation inputs
    synthetic: bool  # random training inputs: accuracy on real data is unknown
    steps: int  # optimizer steps done, those before a --resume included
    total_steps: int  # steps asked for
    resumed_from: int | None  # the checkpoint's step, when resumed
    batch_size: int  # inputs per step, over all processes
    epochs: float | None  # passes over the training inputs (None for synthetic)
    lr: float  # peak learning rate (AdamW, linear warm-up then cosine decay to 0)
    warmup_steps: int
    weight_decay: float
    output_loss: list[str]  # per output tensor: "kl" (class scores, with temperature) or "mse" (relative)
    temperature: float
    feature_weight: float  # weight of the feature loss (relative MSE at each converted layer's output)
    batchnorm: str  # "update" (batch statistics, running averages updated) or "freeze" (running statistics kept)
    feature_layers: list[str]  # converted layers matched against the teacher's conv output there
    unmatched_layers: list[str]  # converted layers with no teacher conv output to match (output loss only)
    device: str  # where it trained: cpu, cuda, cuda:N
    amp: str | None  # autocast dtype on CUDA (bfloat16, float16), None in float32
    world_size: int  # processes (torch.distributed DDP), 1 without torchrun
    seed: int
    seconds: float  # wall time of the training steps of this run (validation not included)
    steps_per_second: float  # training steps of this run / seconds
    eval_seconds: float  # wall time of validation
    loss_start: float  # training loss (output + weighted feature loss), mean of the first steps (LOSS_WINDOW)
    loss_end: float  # the same over the last steps
    before: DistillMetrics  # the converted model as it came from the SVD
    after: DistillMetrics  # the weights kept
    best_step: int  # the step whose weights were kept (0: the SVD init was not improved)
    curve: list[list[float]]  # [step, training loss], averaged over buckets of steps (at most CURVE_POINTS)
    val_curve: list[list[float]]  # [step, validation loss] at each validation
    notes: list[str]

    def to_markdown(self) -> str:
        def fmt(metrics: DistillMetrics) -> list[str]:
            agreement = "" if metrics.top1_agreement is None else f"{metrics.top1_agreement:.2%}"
            return [f"{metrics.output_rel_error:.4g}", agreement, f"{metrics.loss:.4g}"]

        amp = f", autocast {self.amp}" if self.amp else ""
        processes = f", {self.world_size} processes" if self.world_size > 1 else ""
        lines = [
            "## Distillation",
            "",
            f"- {self.message}",
            f"- training data: {self.data}; validation: {self.val_data}",
            f"- {self.steps}/{self.total_steps} steps in {self.seconds:.1f} s ({self.steps_per_second:.3g} steps/s) "
            f"on {self.device}{amp}{processes}; batch {self.batch_size}, lr {self.lr:g}, "
            f"feature weight {self.feature_weight:g}, BatchNorm {self.batchnorm}, "
            f"output loss {', '.join(self.output_loss)}, seed {self.seed}",
            f"- training loss {self.loss_start:.4g} -> {self.loss_end:.4g}; weights kept from step {self.best_step}",
            "",
            "| on the validation inputs | before | after |",
            "|---|---:|---:|",
        ]
        for label, before, after in zip(
            ("output rel. error", "top-1 agreement with the original", "output loss"),
            fmt(self.before),
            fmt(self.after),
            strict=True,
        ):
            if before:
                lines.append(f"| {label} | {before} | {after} |")
        lines += [""] + [f"- {note}" for note in self.notes] if self.notes else []
        lines += ["", "![loss curve](distill.png)"]
        return "\n".join(lines) + "\n"


def plot_distill(distill: DistillReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG of the training loss per step, with the validation loss and the step whose weights were kept."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if distill.curve:
        steps, losses = zip(*distill.curve, strict=True)
        axes.plot(steps, losses, label="training loss (output + features)")
    if distill.val_curve:
        steps, losses = zip(*distill.val_curve, strict=True)
        axes.plot(steps, losses, "o-", label="validation output loss")
    axes.axvline(distill.best_step, color="grey", linestyle=":", label=f"kept: step {distill.best_step}")
    values = [v for _, v in distill.curve + distill.val_curve if v > 0]
    if values and max(values) > 20 * min(values):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    agreement = ""
    if distill.after.top1_agreement is not None and distill.before.top1_agreement is not None:
        agreement = f", top-1 agreement {distill.before.top1_agreement:.1%} -> {distill.after.top1_agreement:.1%}"
    axes.set_title(f"distillation: {distill.steps} steps, {distill.status}{agreement}", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
