"""The figures and table cells that report.md and the terminal tables both show, as plain text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from convert.report.noise import NOISY_CV, NOISY_TAIL, coefficient_of_variation, noise

if TYPE_CHECKING:  # annotations only: the schema's methods call the renderers, which read it
    from convert.report.schema import AutoReport, Benchmark, LayerReport, Report, TorchRuntime

__all__ = [
    "BENCH_COLUMNS",
    "BENCH_LEGEND",
    "LAYER_COLUMNS",
    "LAYER_LEGEND",
    "NUMERIC_LAYER_COLUMNS",
    "auto_where",
    "benchmark_rows",
    "describe_benchmark",
    "format_count",
    "format_ms",
    "format_ratio",
    "format_speedup",
    "layer_cells",
    "model_pt_note",
    "runtime_name",
    "summary",
    "torch_settings",
]

LAYER_COLUMNS = ("layer", "op", "kernel", "channels", "rank", "groups", "params", "MACs", "weight error", "note")
NUMERIC_LAYER_COLUMNS = frozenset({"rank", "groups", "params", "MACs", "weight error"})
LAYER_LEGEND = (
    "rank: filters per group, of the most a group can use (exact at full rank); groups: of the depthwise or "
    "grouped conv; params, MACs: before -> after; weight error: ||W - W'|| / ||W||, the factorized conv's weight "
    "against the original's"
)
BENCH_COLUMNS = (
    "model",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "min ms",
    "std ms",
    "CV",
    "items/s",
    "RSS+ MiB",
    "speedup",
    "MAC ratio",
    "speedup / MAC ratio",
)
BENCH_LEGEND = (
    "p50, p90, p99: the time that 50%, 90%, 99% of runs do not exceed; CV: std / mean, NOISY when above "
    f"{NOISY_CV:.0%} or when p90 is above {NOISY_TAIL:g}x p50 (such times do not compare); items/s: batch / mean; "
    "RSS+: memory the model added to the process; speedup: the first model's p50 / this one's; MAC ratio: the first "
    "model's MACs / this one's; speedup / MAC ratio: how much of the MAC saving became speed"
)


def format_count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def format_ratio(before: int, after: int) -> str:
    """'8.13x fewer' for a reduction, '1.12x more' for a growth, 'unchanged' when they round to equal."""
    if not before or not after:
        return "n/a"
    if round(before / after, 2) == 1:
        return "unchanged"
    return f"{before / after:.2f}x fewer" if after < before else f"{after / before:.2f}x more"


def format_ms(value: float) -> str:
    """Milliseconds to 3 significant digits, whole ones from a second up."""
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def summary(report: Report) -> str:
    """One line: counts, parameters, MACs and output error."""
    t = report.totals
    return (
        f"{t.converted} converted, {t.skipped} skipped"
        f" | params {format_count(t.params_before)} -> {format_count(t.params_after)}"
        f" ({format_ratio(t.params_before, t.params_after)})"
        f" | MACs {format_count(t.macs_before)} -> {format_count(t.macs_after)}"
        f" ({format_ratio(t.macs_before, t.macs_after)})"
        f" | output rel. error {report.output_rel_error:.3g} (eval){_train_error(report)}"
    )


def _train_error(report: Report) -> str:
    """The train-mode error after the eval one, when train mode was checked too."""
    error = report.train_output_rel_error
    return "" if error is None else f", {error:.3g} (train)"


def layer_cells(row: LayerReport) -> list[str]:
    """One layer's cells, in the order of LAYER_COLUMNS."""
    converted = row.status == "converted"
    rank = "" if row.rank is None else f"{row.rank} of {row.full_rank}" if row.full_rank else str(row.rank)
    return [
        row.name,
        row.op,
        "x".join(map(str, row.kernel or [])),
        f"{row.in_channels}->{row.out_channels}" if row.in_channels else "",
        rank if converted else "",
        str(row.groups) if converted else "",
        f"{format_count(row.params_before)}->{format_count(row.params_after)}"
        if converted
        else format_count(row.params_before),
        format_ratio(row.macs_before, row.macs_after) if converted else "",
        "" if row.weight_rel_error is None else f"{row.weight_rel_error:.3f}",
        (row.reason or "") if converted else f"skipped: {row.reason}",
    ]


def benchmark_rows(benchmark: Benchmark) -> list[list[str]]:
    """Cells of the latency table, in the order of BENCH_COLUMNS: one row per model and batch size."""
    speedups = {(s.model, s.batch): s for s in benchmark.speedup}
    rows = []
    for index, model in enumerate(benchmark.models):
        for lat in model.latency:
            s = speedups.get((model.name, lat.batch))
            rows.append(
                [
                    model.name,
                    str(lat.batch),
                    *(format_ms(v) for v in (lat.p50, lat.p90, lat.p99, lat.mean, lat.min, lat.std)),
                    f"{coefficient_of_variation(lat):.0%}{' NOISY' if noise(lat) else ''}",
                    f"{lat.throughput:.4g}",
                    f"{model.rss_growth_bytes / 2**20:.1f}",
                    "baseline" if index == 0 else format_speedup(s.speedup) if s else "",
                    f"{s.mac_ratio:.2f}x" if s and s.mac_ratio else "",
                    f"{s.of_mac_ratio:.0%}" if s and s.of_mac_ratio else "",
                ]
            )
    return rows


def describe_benchmark(benchmark: Benchmark) -> str:
    """One line: where it ran, how, and with what."""
    threads = f", {benchmark.threads} threads" if benchmark.threads else ""
    timing = f"{benchmark.runs} runs" if benchmark.duration is None else f"{benchmark.duration:g} s"
    return (
        f"{runtime_name(benchmark)} on {benchmark.device} ({benchmark.reason}){threads}; "
        f"{benchmark.warmup} warm-up + {timing} per batch size, models alternating run by run"
    )


def format_speedup(speedup: float) -> str:
    """'1.52x', or '0.63x (slower)': a model slower than the baseline says so."""
    return f"{speedup:.2f}x" if speedup >= 1 else f"{speedup:.2f}x (slower)"


def runtime_name(benchmark: Benchmark) -> str:
    """'ONNX Runtime 1.31.1', or e.g. 'PyTorch 2.14.1 compiled, bfloat16, channels-last'."""
    if benchmark.torch is None:
        return f"ONNX Runtime {benchmark.ort_version}"
    return f"PyTorch {benchmark.torch.version} {torch_settings(benchmark.torch)}"


def torch_settings(settings: TorchRuntime) -> str:
    """'eager, float32' or 'compiled, bfloat16, channels-last'."""
    parts = ["compiled" if settings.compile else "eager", settings.dtype]
    return ", ".join(parts + (["channels-last"] if settings.channels_last else []))


def auto_where(auto: AutoReport) -> str:
    """Where --to auto timed its layers: 'cpu (ONNX Runtime)', or e.g. 'cuda (PyTorch, eager, bfloat16)'."""
    runtime = "ONNX Runtime" if auto.torch is None else f"PyTorch, {torch_settings(auto.torch)}"
    return f"{auto.device} ({runtime})"


def model_pt_note(report: Report) -> str | None:
    """Why the folder has no model.pt, and how to load the model without it; None when model.pt was written."""
    if report.model_pt_skipped is None:
        return None
    return (
        f"model.pt not written: the model does not pickle ({report.model_pt_skipped}); load it as "
        "convert.apply_plan(<the model freshly built>, 'plan.json') and then "
        "load_state_dict(safetensors.torch.load_file('model.safetensors'))"
    )
