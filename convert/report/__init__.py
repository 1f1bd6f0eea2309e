"""What a conversion did: the report.json schema, its Markdown and terminal forms, and the plots."""

from convert.report.schema import (
    Benchmark,
    DistillMetrics,
    DistillReport,
    LayerReport,
    OnnxExport,
    OnnxReport,
    Report,
    Totals,
    plot_benchmark,
    plot_distill,
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
    "plot_benchmark",
    "plot_distill",
]
