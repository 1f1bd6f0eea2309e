"""The terminal's tables (rich): a conversion's layers, a benchmark's latencies, and what `convert inspect` shows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from convert.report.text import (
    BENCH_COLUMNS,
    BENCH_LEGEND,
    LAYER_COLUMNS,
    LAYER_LEGEND,
    NUMERIC_LAYER_COLUMNS,
    benchmark_rows,
    describe_benchmark,
    format_count,
    format_ratio,
    layer_cells,
    summary,
)

if TYPE_CHECKING:  # annotations only: the schema's methods call these functions
    from convert.report.schema import Benchmark, LayerReport, Report

__all__ = ["benchmark_table", "inspect_table", "report_table"]

# Every cell is escaped: names and notes (e.g. an --exclude regex) may hold [brackets] that rich reads as markup.


def report_table(report: Report) -> Table:
    """The per-layer table; skipped layers are dimmed, the summary line is the caption."""
    table = Table(title=f"{report.target} via {report.trace}", caption=escape(f"{summary(report)}\n{LAYER_LEGEND}"))
    for column in LAYER_COLUMNS:
        table.add_column(column, overflow="fold", justify="right" if column in NUMERIC_LAYER_COLUMNS else "left")
    for row in report.layers:
        table.add_row(*map(escape, layer_cells(row)), style="dim" if row.status == "skipped" else None)
    return table


def benchmark_table(benchmark: Benchmark) -> Table:
    """The latency table: a row per model and batch size, where and how it ran as the caption."""
    caption = "; ".join([describe_benchmark(benchmark), *benchmark.notes]) + f"\n{BENCH_LEGEND}"
    runtime = "ONNX Runtime" if benchmark.torch is None else "PyTorch"
    table = Table(title=f"{runtime} latency (ms)", caption=escape(caption))
    for column in BENCH_COLUMNS:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in benchmark_rows(benchmark):
        table.add_row(*map(escape, row))
    return table


def inspect_table(labels: Sequence[str], views: Sequence[Sequence[LayerReport]]) -> Table:
    """What each target would save, per standard conv: `views[i]` is `inspect_model`'s rows for target `labels[i]`.

    Args:
        labels: a column title per target (e.g. "separable", "grouped g4").
        views: per target, one row per conv, in the same order for every target.

    Returns:
        The table: the conv's shape and cost, then per target its MACs and weight error (or why it is skipped).
    """
    table = Table(title="standard convolutions and what each target would save")
    for column in ("layer", "kernel", "channels", "output HxW", "recept. field", "params", "MACs"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for label in labels:
        table.add_column(f"{escape(label)}: MACs", justify="right")
        table.add_column("weight error", justify="right")
    for index, row in enumerate(views[0] if views else ()):
        cells = [
            escape(row.name),
            "x".join(map(str, row.kernel or [])),
            f"{row.in_channels}->{row.out_channels}",
            "x".join(map(str, (row.output_shape or [])[2:])),
            "x".join(map(str, row.receptive_field or [])) or "?",
            format_count(row.params_before),
            format_count(row.macs_before),
        ]
        for view in views:
            other = view[index]
            if other.status == "converted":
                cells += [
                    f"{format_count(other.macs_after)} ({format_ratio(other.macs_before, other.macs_after)})",
                    f"{other.weight_rel_error:.3f}",
                ]
            else:
                cells += [f"[dim]{escape(str(other.reason))}[/dim]", ""]
        table.add_row(*cells)
    return table
