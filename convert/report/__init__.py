"""What a conversion did: the report.json schema, its Markdown (report.md) and terminal (rich) forms, the plots."""

from convert.report.plots import plot_auto, plot_benchmark, plot_distill
from convert.report.schema import (
    Benchmark,
    DistillMetrics,
    DistillReport,
    LayerReport,
    OnnxExport,
    OnnxReport,
    Report,
    Totals,
)

__all__ = [
    "Benchmark",
    "DistillMetrics",
    "DistillReport",
    "LayerReport",
    "OnnxExport",
    "OnnxReport",
    "Report",
    "Totals",
    "plot_auto",
    "plot_benchmark",
    "plot_distill",
]
