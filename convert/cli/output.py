"""Everything the command line prints: results on stdout; progress, warnings, summaries and errors on stderr."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from convert.artifacts import output_files
from convert.cli.flags import to_cli
from convert.common import Progress as ProgressCallback
from convert.distill.config import DistillEvent, DistillProgress
from convert.distill.parallel import is_main_process
from convert.errors import INTERNAL, INTERRUPTED, StrictError, outcome_of
from convert.report import Benchmark, DistillMetrics, DistillReport, LayerReport, QuantizeReport, Report
from convert.report.terminal import benchmark_table, inspect_table, report_table
from convert.report.text import model_pt_note

__all__ = [
    "distill_printer",
    "print_benchmark",
    "print_conversion",
    "print_failure",
    "print_inspection",
    "progress_bar",
    "set_quiet",
    "stderr",
    "stdout",
    "strict_warning",
    "warn",
]

# Piped output keeps a readable table width instead of rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)


_quiet = False  # -q: no notes, warnings or progress bar on stderr (errors still print)


def set_quiet(quiet: bool) -> None:
    """-q: from now on, stderr gets errors only."""
    global _quiet
    _quiet = quiet


def print_conversion(report: Report, outdir: Path, as_json: bool) -> None:
    """A finished job: report.json alone on stdout (`as_json`), or the tables, then what happened, on stderr."""
    stopped = report.distill is not None and report.distill.status != "completed"
    if as_json:
        print(report.to_json())
        if stopped:
            warn(report.distill.message)
        return
    stdout.print(report_table(report))
    if report.benchmark is not None:
        stdout.print(benchmark_table(report.benchmark))
    if report.onnx is not None:
        worst = ", ".join(
            f"{e.path} {max(p.max_rel for p in e.parity):.2g}" for e in (report.onnx.original, report.onnx.converted)
        )
        _note(f"ONNX Runtime matches PyTorch: max rel. diff {worst} (--atol {report.onnx.atol:g})")
    if report.auto is not None:
        for note in report.auto.notes:
            warn(note)
        measured = next((s.speedup for s in report.benchmark.speedup if s.batch == report.input_shapes[0][0]), None)
        _note(
            f"--to auto: target {report.auto.target_speedup:g}x, predicted {report.auto.predicted_speedup:.2f}x"
            + (f", measured {measured:.2f}x" if measured else "")
        )
    if report.calibration is not None:
        for note in report.calibration.notes:
            warn(note)
        _note(report.calibration.summary())
    if report.distill is not None:
        _note(_distill_summary(report.distill))
    if report.quantize is not None:
        for note in report.quantize.notes:
            warn(note)
        _note(_quantize_summary(report.quantize))
    model_pt = model_pt_note(report)
    if model_pt is not None:
        warn(model_pt)
    _note(f"wrote {outdir}/ ({', '.join(output_files(report))})")


def print_inspection(
    labels: Sequence[str], views: Sequence[Sequence[LayerReport]], grouped: bool, as_json: bool = False
) -> None:
    """`convert inspect`'s table (or its rows as JSON, by label); without `grouped`, a hint that it can show
    grouped too."""
    if as_json:
        print(
            json.dumps(
                {label: [dataclasses.asdict(row) for row in view] for label, view in zip(labels, views, strict=True)}
            )
        )
        return
    stdout.print(inspect_table(labels, views))
    if not grouped and not _quiet:
        stderr.print("add --groups G to see the grouped target too")


def print_benchmark(benchmark: Benchmark, as_json: bool) -> None:
    """`convert bench`'s results: as JSON, or the latency table."""
    if as_json:
        print(json.dumps(dataclasses.asdict(benchmark), indent=2))
    else:
        stdout.print(benchmark_table(benchmark))


def print_failure(error: BaseException) -> int:
    """One line on stderr for what stopped a command; the exit status that goes with it (`outcome_of`).

    Returns:
        The exit status.
    """
    outcome = outcome_of(error)
    if outcome is INTERRUPTED:
        message = "nothing was written"
    elif outcome is INTERNAL:  # a bug: the traceback is one --verbose away
        message = f"{type(error).__name__}: {error} (rerun with --verbose for the traceback)"
    else:
        message = to_cli(str(error))
    color = "" if outcome is INTERRUPTED else "red"
    label = f"[{color}]{outcome.label}:[/{color}]" if color else f"{outcome.label}:"
    stderr.print(f"{label} {escape(message)}", highlight=False, soft_wrap=True)
    return outcome.exit_code


def warn(message: str) -> None:
    """A one-line warning on stderr (the library's `on_warning`)."""
    if _quiet:
        return
    stderr.print(f"[yellow]warning:[/yellow] {escape(to_cli(message))}", highlight=False, soft_wrap=True)


def strict_warning(message: str) -> None:
    """--strict's `on_warning`: the warning stops the run, as an error (exit status 1, nothing written).

    Raises:
        StrictError: always.
    """
    raise StrictError(f"{message} (a warning: --strict makes it an error)")


@contextlib.contextmanager
def progress_bar() -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr, fed with (what is running, fraction done); None when stderr is not a terminal."""
    if not stderr.is_terminal or _quiet:  # a log file gets no bar, not even a blank line
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),  # the time left, from the rate so far (rich's estimate)
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda what, fraction: bar.update(task, description=escape(what), completed=fraction)


def distill_printer(quiet: bool, bar: bool) -> DistillProgress:
    """What is trained where, and (without a progress bar) a line per validation; nothing when `quiet`."""
    quiet = quiet or _quiet or not is_main_process()

    def show(event: DistillEvent) -> None:
        if event.kind == "eval" and not bar and not quiet:
            stderr.print(f"step {event.step}/{event.total}: validation {_metrics(event.metrics)}", highlight=False)
        elif event.kind == "start" and not quiet:
            _note(to_cli(event.message or ""))

    return show


def _note(text: str) -> None:
    if _quiet:
        return
    stderr.print(escape(text), highlight=False, soft_wrap=True)


def _metrics(metrics: DistillMetrics) -> str:
    agreement = "" if metrics.top1_agreement is None else f", top-1 agreement {metrics.top1_agreement:.1%}"
    return f"output rel. error {metrics.output_rel_error:.3g}{agreement}"


def _distill_summary(distill: DistillReport) -> str:
    return (
        f"distilled {distill.steps}/{distill.total_steps} steps in {distill.seconds:.1f} s "
        f"({distill.steps_per_second:.3g} steps/s): {_metrics(distill.before)} -> {_metrics(distill.after)}"
        f"{'; on synthetic inputs: accuracy on real data is unknown' if distill.synthetic else ''}; "
        f"{to_cli(distill.message)}"
    )


def _quantize_summary(quantize: QuantizeReport) -> str:
    """One clause per INT8 file: the format kept, its speedup over its float file, its error."""
    parts = []
    for model in (quantize.original, quantize.converted):
        chosen = model.chosen
        agreement = "" if chosen.top1_agreement is None else f", top-1 agreement {chosen.top1_agreement:.1%}"
        passed = sum(c.passed for c in model.candidates)
        parts.append(
            f"{model.path}: {model.format}, {chosen.speedup:.2f}x over {model.source}, "
            f"rel. error {chosen.rel_error:.3g}{agreement} ({passed} of {len(model.candidates)} formats passed)"
        )
    return "INT8 " + "; ".join(parts)
