"""report.md: a conversion's report as Markdown, one section per stage that ran."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convert.report.text import (
    BENCH_COLUMNS,
    BENCH_LEGEND,
    LAYER_COLUMNS,
    LAYER_LEGEND,
    auto_where,
    benchmark_rows,
    describe_benchmark,
    format_ms,
    layer_cells,
    model_pt_note,
    summary,
)

if TYPE_CHECKING:  # annotations only: the schema's methods call these functions
    from convert.report.schema import (
        AutoReport,
        Benchmark,
        CalibrationReport,
        DistillMetrics,
        DistillReport,
        LayerReport,
        OnnxReport,
        QuantizeReport,
        Report,
    )

__all__ = [
    "auto_markdown",
    "benchmark_markdown",
    "calibration_markdown",
    "distill_markdown",
    "onnx_markdown",
    "quantize_markdown",
    "report_markdown",
]


def report_markdown(report: Report) -> str:
    """The whole of report.md: the per-layer table, then the sections of --to auto, distillation, ONNX, benchmark,
    INT8 quantization."""
    notes = f" ({'; '.join(report.trace_notes)})" if report.trace_notes else ""
    model_pt = model_pt_note(report)
    lines = [
        f"# Conversion report: {report.target}",
        "",
        f"- trace path: `{report.trace}`{notes}",
        f"- input: {', '.join('x'.join(map(str, s)) for s in report.input_shapes)} ({report.input_dtype})",
        f"- {summary(report)}",
        *([f"- {model_pt}"] if model_pt else []),
        "",
        "| " + " | ".join(LAYER_COLUMNS) + " |",
        "|" + "---|" * len(LAYER_COLUMNS),
    ]
    lines += ["| " + " | ".join(layer_cells(row)) + " |" for row in report.layers]
    lines += ["", f"_{LAYER_LEGEND}_"]
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
    if report.quantize is not None:
        sections.append(quantize_markdown(report.quantize, report.benchmark))
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
    lines += ["", f"_{BENCH_LEGEND}_"]
    lines += [""] + [f"- {note}" for note in benchmark.notes] if benchmark.notes else []
    return "\n".join(lines) + "\n"


def auto_markdown(auto: AutoReport) -> str:
    """The --to auto section: the budget, the fit, and each layer's choice."""
    lines = [
        "## Latency-aware plan (--to auto)",
        "",
        f"- target {auto.target_speedup:g}x on {auto_where(auto)}: predicted {auto.predicted_speedup:.2f}x "
        f"({auto.baseline_ms:.3g} ms -> {auto.predicted_ms:.3g} ms; the fastest plan measured "
        f"{auto.fastest_ms:.3g} ms; predicted = {auto.fixed_ms:.3g} ms + {auto.scale:.3g} x the layers' own ms)",
        f"- candidate latencies: {auto.measured} measured, {auto.cached} from the cache ({auto.cache_dir}); "
        f"candidate errors on {auto.errors_on}",
        *(
            [
                f"- planned for INT8 ({auto.quantize}): layers, the fastest plan and the original "
                f"({auto.quantized_ms:.3g} ms) timed quantized; the target is over the float original"
            ]
            if auto.quantize
            else []
        ),
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


def quantize_markdown(quantize: QuantizeReport, benchmark: Benchmark | None = None) -> str:
    """The INT8 section: the four models side by side (with the benchmark), then every format tried."""
    lines = [
        "## INT8 quantization",
        "",
        f"- ONNX Runtime static quantization, per-channel int8 weights; {quantize.calibration_method} ranges from "
        f"{quantize.calibration_samples} inputs ({quantize.calibration}); checked on {quantize.check_samples} "
        f"held-out inputs ({quantize.check}): a format passes within {quantize.max_quant_error:g} relative output "
        "error of float",
        f"- formats timed on {quantize.device} at batch {quantize.batch}, {quantize.runs} runs each, side by side "
        "with the float model; the fastest that passes is kept",
        *(f"- {note}" for note in quantize.notes),
    ]
    if benchmark is not None:
        lines += ["", *_side_by_side(quantize, benchmark)]
    lines += [
        "",
        "| model | format | ms | speedup over float | rel. error vs float | top-1 agreement | passed | kept |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for model in (quantize.original, quantize.converted):
        for c in model.candidates:
            lines.append(
                f"| {model.source} | {c.label} (`{c.format}`) | {format_ms(c.latency_ms)} | {c.speedup:.2f}x | "
                f"{c.rel_error:.3g} | {_percent(c.top1_agreement)} | {'yes' if c.passed else '**no**'} | "
                f"{'**kept**' if c.format == model.format else ''} |"
            )
    return "\n".join(lines) + "\n"


def _side_by_side(quantize: QuantizeReport, benchmark: Benchmark) -> list[str]:
    """The four models in one table: latency and speedup from the benchmark, size, error against the original."""
    timings = {m.path: m for m in benchmark.models}
    base = timings.get(quantize.original.source)
    original, converted = quantize.original, quantize.converted
    rows = [
        (original.source, original.float_bytes, 0.0, None if original.vs_original_top1 is None else 1.0),
        (original.path, original.file_bytes, original.vs_original, original.vs_original_top1),
        (converted.source, converted.float_bytes, converted.float_vs_original, converted.float_vs_original_top1),
        (converted.path, converted.file_bytes, converted.vs_original, converted.vs_original_top1),
    ]
    lines = [
        f"| model (batch {benchmark.batch_sizes[0]}) | p50 ms | speedup over the original | size MiB | "
        "rel. error vs the original (held-out) | top-1 agreement with the original |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for path, size, error, top1 in rows:
        timing = timings.get(path)
        p50 = timing.latency[0].p50 if timing else None
        speedup = f"{base.latency[0].p50 / p50:.2f}x" if base and p50 else ""
        lines.append(
            f"| `{path}` | {format_ms(p50) if p50 else ''} | {speedup} | {size / 2**20:.2f} | {error:.3g} | "
            f"{_percent(top1)} |"
        )
    return lines


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"
