"""What a conversion changed, per layer and in total: dataclasses, and their JSON, Markdown and table forms."""

from __future__ import annotations

import dataclasses
import json
import os
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
    trace_notes: list[str]  # why earlier trace paths were not used
    options: dict[str, Any]  # the ConvertConfig fields
    input_shapes: list[list[int]]
    input_dtype: str
    layers: list[LayerReport]
    totals: Totals
    output_rel_error: float  # ||y_converted - y_original|| / ||y_original|| on the example input
    seconds: dict[str, float]  # wall time per stage
    versions: dict[str, str]
    version: int = REPORT_VERSION
    onnx: OnnxReport | None = None  # the ONNX exports and their parity (--onnx)
    benchmark: Benchmark | None = None  # ONNX Runtime latency, original vs converted (--benchmark)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
        sections = [section.to_markdown() for section in (self.onnx, self.benchmark) if section is not None]
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
