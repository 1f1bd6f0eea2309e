"""The public names of `convert.report` (imported on first use: see __init__.py)."""

from .plots import plot_auto, plot_benchmark, plot_distill
from .schema import (
    Benchmark,
    DistillMetrics,
    DistillReport,
    LayerReport,
    OnnxExport,
    OnnxReport,
    QuantizeReport,
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
    "QuantizeReport",
    "Report",
    "Totals",
    "plot_auto",
    "plot_benchmark",
    "plot_distill",
]
