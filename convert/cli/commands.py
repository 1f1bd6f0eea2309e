"""The `convert` command's subcommands: which parser and which run function each one has, and `main`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from convert.cli import jobs, output, remote
from convert.cli.args import bench_parser, convert_parser, inspect_parser
from convert.cli.options import (
    bench_config,
    input_names,
    input_shapes,
    inspect_configs,
    job_options,
    model_args,
    output_dir,
    server_of,
)
from convert.distill.parallel import is_main_process
from convert.errors import DISTILL_NAN, INTERNAL, INTERRUPTED, ConvertError, outcome_of
from convert.forward import cast
from convert.job import run_job
from convert.job_inputs import example_inputs
from convert.load import load_model
from convert.report import DistillReport, plot_benchmark
from convert.runtime import benchmark_onnx, benchmark_torch
from convert.runtime.torch_bench import load_timed_models
from convert.surgery.pipeline import inspect_model

__all__ = ["COMMANDS", "CONVERT", "Command", "main", "run_bench", "run_convert", "run_inspect"]


def main(argv: Sequence[str] | None = None) -> int:
    """`convert [SUBCOMMAND] ...`: run the subcommand its first argument names, else a job (`convert MODEL ...`).

    Returns:
        The exit status: 0, or what `convert.errors.outcome_of` says of the failure (2 for a bad input).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return CONVERT(argv)


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand of our own: its parser, and the function that runs it on the parsed arguments."""

    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]

    def __call__(self, argv: Sequence[str]) -> int:
        """Parse `argv`, run, and turn any failure into one line on stderr and its exit status."""
        args = self.parser().parse_args(argv)
        log_level = getattr(args, "log_level", None)  # `convert jobs` has -v only
        level = log_level.upper() if log_level else logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(name)s: %(message)s")
        output.set_quiet(getattr(args, "quiet", False))
        if not args.verbose:
            warnings.filterwarnings("ignore")  # torch's tracing and export warnings are not the user's business
        try:
            return self.run(args)
        except (Exception, KeyboardInterrupt) as e:
            if args.verbose and outcome_of(e) is INTERNAL:
                raise
            return output.print_failure(e)


def run_convert(args: argparse.Namespace) -> int:
    """`convert MODEL ...`: run the job here or on --server, print what it did."""
    options = job_options(args)
    outdir = output_dir(args, options.config.target)
    server = server_of(args)
    on_warning = output.strict_warning if args.strict else output.warn
    with output.progress_bar() as progress:
        if server is not None:
            report = remote.run_remote(
                server, options, outdir, overwrite=args.overwrite, progress=progress, on_warning=on_warning
            )
        else:
            on_event = output.distill_printer(quiet=args.json, bar=progress is not None)
            report = run_job(
                options,
                outdir,
                overwrite=args.overwrite,
                progress=progress,
                on_warning=on_warning,
                on_event=on_event,
            )
    if options.distill is not None and not is_main_process():
        return 0  # a torchrun worker: rank 0 writes OUTDIR and prints
    output.print_conversion(report, outdir, as_json=args.json)
    return _distill_status(report.distill)


def run_inspect(args: argparse.Namespace) -> int:
    """`convert inspect MODEL ...`: what each target would save, per standard conv; writes nothing."""
    loaded = load_model(args.model, args.weights, on_warning=output.warn, model_args=model_args(args))
    inputs = example_inputs(loaded, input_shapes(args), args.input_dtype, input_names(args))
    if args.model_dtype is not None:
        loaded.model, inputs = cast(loaded.model, inputs, args.model_dtype)
    configs = inspect_configs(args)
    views = inspect_model(loaded.model, inputs, list(configs.values()))
    output.print_inspection(list(configs), views, grouped=len(configs) > 1, as_json=args.json)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`convert bench FILE ...`: time ONNX files side by side, or (--runtime torch) PyTorch models."""
    config = bench_config(args)
    if config.runtime == "torch":
        if input_names(args):
            raise ConvertError("convert bench takes --input-shape by position (N,C,...), not NAME=N,C,...")
        models, inputs = load_timed_models(args.files, input_shapes(args), args.input_dtype, on_warning=output.warn)
        with output.progress_bar() as progress:
            result = benchmark_torch(models, inputs, config, names=args.files, progress=progress)
    else:
        if args.input_shape:
            raise ConvertError("--input-shape goes with --runtime torch (ONNX files hold their shapes)")
        with output.progress_bar() as progress:
            result = benchmark_onnx(args.files, config, names=args.files, progress=progress)
    if args.plot:
        plot_benchmark(result, args.plot)
    output.print_benchmark(result, as_json=args.json)
    return 0


def _distill_status(distill: DistillReport | None) -> int:
    """0, or the status of a distillation that stopped early (its results are written all the same)."""
    if distill is None or distill.status == "completed":
        return 0
    return (DISTILL_NAN if distill.status == "nan" else INTERRUPTED).exit_code


CONVERT = Command(convert_parser, run_convert)  # no subcommand: a job
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "inspect": Command(inspect_parser, run_inspect),
    "bench": Command(bench_parser, run_bench),
    "jobs": Command(jobs.parser, jobs.run),  # a server's jobs, listed or deleted (convert/cli/jobs.py)
    "serve": remote.serve,  # the gRPC service parses its own options (server/cli.py)
}
