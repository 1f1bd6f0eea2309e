"""What a conversion did: the report.json schema, its Markdown and terminal forms, and the plots.

`schema` holds the records (and their JSON, both ways); `markdown` renders report.md, `terminal` the rich tables,
`plots` the PNGs; `text` has the figures and cells the two text forms share.
"""

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
