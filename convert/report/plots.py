"""The report's PNG plots (matplotlib, Agg: no display, no global pyplot state): benchmark, --to auto, distillation."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from convert.report.text import format_ms

if TYPE_CHECKING:
    from convert.report.schema import AutoReport, Benchmark, DistillReport

__all__ = ["plot_auto", "plot_benchmark", "plot_distill"]


def plot_benchmark(benchmark: Benchmark, path: str | os.PathLike[str]) -> None:
    """Write a PNG of median latency per batch size, one bar per model (whiskers: min to p90)."""
    figure, axes = _figure(max(5.0, 1.6 + 1.2 * len(benchmark.batch_sizes) * len(benchmark.models)), 4.0)
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
        axes.bar_label(bars, labels=[format_ms(v) for v in p50], padding=2, fontsize=8)
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
    _save(figure, path)


def plot_auto(auto: AutoReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG of predicted latency against error for the plans the search visited, the chosen one marked."""
    figure, axes = _figure(6.0, 4.0)
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
    _save(figure, path)


def plot_distill(distill: DistillReport, path: str | os.PathLike[str]) -> None:
    """Write a PNG of the training loss per step, with the validation loss and the step whose weights were kept."""
    figure, axes = _figure(7.0, 4.0)
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
    _save(figure, path)


def _figure(width: float, height: float):
    """A figure with one axes, on its own Agg canvas (matplotlib is imported only when a plot is drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure, path: str | os.PathLike[str]) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
