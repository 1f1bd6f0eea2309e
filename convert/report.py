"""What a conversion changed, per layer and in total: dataclasses, and their JSON, Markdown and table forms."""

from __future__ import annotations

import dataclasses
import json
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
    trace: str  # fx | export | module-walk
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
        return "\n".join(lines) + "\n"

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
