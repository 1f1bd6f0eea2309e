"""report.md: a conversion's report as Markdown, one section per stage that ran."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convert.report.text import BENCH_COLUMNS, LAYER_COLUMNS, benchmark_rows, describe_benchmark, layer_cells, summary

if TYPE_CHECKING:  # annotations only: the schema's methods call these functions
    from convert.report.schema import (
        AutoReport,
        Benchmark,
        CalibrationReport,
        DistillMetrics,
        DistillReport,
        LayerReport,
        OnnxReport,
        Report,
    )

__all__ = [
    "auto_markdown",
    "benchmark_markdown",
    "calibration_markdown",
    "distill_markdown",
    "onnx_markdown",
    "report_markdown",
]


def report_markdown(report: Report) -> str:
    """The whole of report.md: the per-layer table, then the sections of --to auto, distillation, ONNX, benchmark."""
    notes = f" ({'; '.join(report.trace_notes)})" if report.trace_notes else ""
    lines = [
        f"# Conversion report: {report.target}",
        "",
        f"- trace path: `{report.trace}`{notes}",
        f"- input: {', '.join('x'.join(map(str, s)) for s in report.input_shapes)} ({report.input_dtype})",
        f"- {summary(report)}",
        "",
        "| " + " | ".join(LAYER_COLUMNS) + " |",
        "|" + "---|" * len(LAYER_COLUMNS),
    ]
    lines += ["| " + " | ".join(layer_cells(row)) + " |" for row in report.layers]
    sections = [
        render(section)
        for render, section in (
            (auto_markdown, report.auto),
            (lambda c: calibration_markdown(c, report.layers), report.calibration),
            (distill_markdown, report.distill),
            (onnx_markdown, report.onnx),
            (benchmark_markdown, report.benchmark),
        )
        if section is not None
    ]
    return "\n".join(lines) + "\n" + "".join("\n" + section for section in sections)


def onnx_markdown(onnx: OnnxReport) -> str:
    """The ONNX section: each export's parity with PyTorch per batch."""
    lines = [
        "## ONNX export",
        "",
        f"ONNX Runtime (CPU) against PyTorch; tolerance {onnx.atol:g} (max |diff| / max |PyTorch| per output).",
        "",
        "| model | file | exporter | opset | batch | max abs diff | max rel diff | within tolerance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, export in (("original", onnx.original), ("converted", onnx.converted)):
        for parity in export.parity:
            ok = "yes" if parity.error is None and parity.max_rel <= onnx.atol else "**no**"
            figures = f"{parity.max_abs:.3g} | {parity.max_rel:.3g}" if parity.error is None else "failed | failed"
            dims = "dynamic batch" if export.dynamic_batch else "static shapes"
            lines.append(
                f"| {name} | `{export.path}` | {export.exporter} | {export.opset} ({dims}) | {parity.batch} "
                f"| {figures} | {ok} |"
            )
    notes = [*onnx.original.notes, *onnx.converted.notes]
    notes += [p.error for e in (onnx.original, onnx.converted) for p in e.parity if p.error]
    lines += [""] + [f"- {note}" for note in notes] if notes else []
    return "\n".join(lines) + "\n"


def benchmark_markdown(benchmark: Benchmark) -> str:
    """The benchmark section: the latency table and its notes."""
    lines = [
        "## Benchmark",
        "",
        f"{describe_benchmark(benchmark)}.",
        "",
        "| " + " | ".join(BENCH_COLUMNS) + " |",
        "|---|" + "---:|" * (len(BENCH_COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in benchmark_rows(benchmark)]
    lines += [""] + [f"- {note}" for note in benchmark.notes] if benchmark.notes else []
    return "\n".join(lines) + "\n"


def auto_markdown(auto: AutoReport) -> str:
    """The --to auto section: the budget, the fit, and each layer's choice."""
    lines = [
        "## Latency-aware plan (--to auto)",
        "",
        f"- target {auto.target_speedup:g}x on {auto.device}: predicted {auto.predicted_speedup:.2f}x "
        f"({auto.baseline_ms:.3g} ms -> {auto.predicted_ms:.3g} ms; the fastest plan measured "
        f"{auto.fastest_ms:.3g} ms; predicted = {auto.fixed_ms:.3g} ms + {auto.scale:.3g} x the layers' own ms)",
        f"- candidate latencies: {auto.measured} measured, {auto.cached} from the cache ({auto.cache_dir})",
        *(f"- {note}" for note in auto.notes),
        "",
        "| layer | input | chosen | ms before | ms after | layer error | model error | candidates |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for layer in auto.layers:
        keep, chosen = layer.candidates[0], layer.candidates[layer.chosen]
        lines.append(
            f"| {layer.name} | {'x'.join(map(str, layer.input_shape))} | {chosen.label} | "
            f"{keep.latency_ms:.3g} | {chosen.latency_ms:.3g} | {chosen.error:.3g} | {chosen.output_error:.3g} | "
            f"{len(layer.candidates)} |"
        )
    return "\n".join(lines) + "\n"


def calibration_markdown(calibration: CalibrationReport, layers: list[LayerReport]) -> str:
    """The calibration section: the data, and each calibrated layer's output error before and after."""
    lines = [
        "## Calibration",
        "",
        f"- {calibration.summary()}",
        f"- {calibration.samples} inputs in batches of {calibration.batch_size}; {calibration.kept} converted layers "
        "kept their weight-SVD factors",
        *(f"- {note}" for note in calibration.notes),
        "",
        "| layer | output error, weight SVD | calibrated | weight error | note |",
        "|---|---:|---:|---:|---|",
    ]
    for row in layers:
        if row.calibration_error_before is None:
            continue
        after = "" if row.calibration_error_after is None else f"{row.calibration_error_after:.3g}"
        weight = "" if row.weight_rel_error is None else f"{row.weight_rel_error:.3g}"
        lines.append(f"| {row.name} | {row.calibration_error_before:.3g} | {after} | {weight} | {row.reason or ''} |")
    return "\n".join(lines) + "\n"


def distill_markdown(distill: DistillReport) -> str:
    """The distillation section: how it ran, and the student against the teacher before and after."""
    amp = f", autocast {distill.amp}" if distill.amp else ""
    processes = f", {distill.world_size} processes" if distill.world_size > 1 else ""
    lines = [
        "## Distillation",
        "",
        f"- {distill.message}",
        f"- training data: {distill.data}; validation: {distill.val_data}",
        f"- {distill.steps}/{distill.total_steps} steps in {distill.seconds:.1f} s "
        f"({distill.steps_per_second:.3g} steps/s) on {distill.device}{amp}{processes}; batch {distill.batch_size}, "
        f"lr {distill.lr:g}, feature weight {distill.feature_weight:g}, BatchNorm {distill.batchnorm}, "
        f"output loss {', '.join(distill.output_loss)}, seed {distill.seed}",
        f"- training loss {distill.loss_start:.4g} -> {distill.loss_end:.4g}; "
        f"weights kept from step {distill.best_step}",
        "",
        "| on the validation inputs | before | after |",
        "|---|---:|---:|",
    ]
    for label, before, after in zip(
        ("output rel. error", "top-1 agreement with the original", "output loss"),
        _metric_cells(distill.before),
        _metric_cells(distill.after),
        strict=True,
    ):
        if before:
            lines.append(f"| {label} | {before} | {after} |")
    lines += [""] + [f"- {note}" for note in distill.notes] if distill.notes else []
    lines += ["", "![loss curve](distill.png)"]
    return "\n".join(lines) + "\n"


def _metric_cells(metrics: DistillMetrics) -> list[str]:
    agreement = "" if metrics.top1_agreement is None else f"{metrics.top1_agreement:.2%}"
    return [f"{metrics.output_rel_error:.4g}", agreement, f"{metrics.loss:.4g}"]
