"""The benchmark's arguments: `convert bench`'s parser, and the timing options a job's --benchmark shares."""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.cli import argtypes
from convert.cli.args.base import Parser, examples, logging_arguments, switch
from convert.cli.args.model import input_arguments
from convert.runtime.bench import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP
from convert.runtime.config import BENCH_DTYPES, RUNTIMES
from convert.runtime.devices import DEVICES

__all__ = ["bench_parser", "benchmark_arguments"]


def bench_parser() -> argparse.ArgumentParser:
    """`convert bench FILE ...`: the benchmark's options."""
    parser = Parser(
        prog="convert bench",
        description="Time ONNX files side by side on ONNX Runtime, or (--runtime torch) PyTorch models on PyTorch, "
        "alternating run by run; speedups are relative to the first model.",
        epilog=examples(
            "convert bench out/original.onnx out/model.onnx --device cpu --batch-sizes 1,8",
            "convert bench a.onnx b.onnx --duration 5 --json > timing.json",
        ),
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=".onnx files; with --runtime torch: .pt2 archives, whole-model pickles (.pt), factory specs "
        "(package.module:callable), or convert output folders (their model.pt)",
    )
    options = parser.add_argument_group("benchmark")
    benchmark_arguments(options)
    input_arguments(
        options,
        "--runtime torch: example input shape, repeat for several inputs (default: a .pt2's example inputs, or "
        "an output folder's report.json); the batch is set by --batch-sizes",
    )
    switch(options, "--json", help="print the results as JSON on stdout, and nothing else")
    options.add_argument("--plot", type=Path, metavar="PNG", help="also write a plot of latency per batch size")
    logging_arguments(parser)
    return parser


def benchmark_arguments(
    group: argparse._ArgumentGroup,
    device_help: str = "ONNX Runtime provider (default: auto, CUDA when a session really runs there, else CPU)",
) -> None:
    """Where and how long to time: the options `convert bench` and a job's --benchmark share."""
    group.add_argument("--device", default="auto", choices=DEVICES, help=device_help)
    group.add_argument("--threads", type=int, metavar="N", help="CPU intra-op threads (default: the physical cores)")
    length = group.add_mutually_exclusive_group()
    length.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_RUNS,
        metavar="N",
        help=f"timed runs per model and batch size (default: {DEFAULT_RUNS})",
    )
    length.add_argument(
        "--duration", type=float, metavar="S", help="time each batch size for S seconds instead of --runs"
    )
    group.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        metavar="N",
        help=f"untimed runs first (default: {DEFAULT_WARMUP})",
    )
    group.add_argument(
        "--batch-sizes",
        type=argtypes.batch_sizes,
        default=DEFAULT_BATCH_SIZES,
        metavar="B,B,...",
        help="batch sizes to time (default: 1)",
    )
    group.add_argument(
        "--runtime",
        default="ort",
        choices=RUNTIMES,
        help="ort: ONNX Runtime on the ONNX files; torch: the PyTorch models themselves (default: ort)",
    )
    switch(
        group,
        "--compile",
        help="--runtime torch: torch.compile the models (default mode, a static graph per batch size) instead of eager",
    )
    group.add_argument(
        "--bench-dtype",
        default="float32",
        choices=BENCH_DTYPES,
        help="--runtime torch: the timed models' dtype (default: float32; ONNX Runtime times the float32 export)",
    )
    switch(group, "--channels-last", help="--runtime torch: models and inputs in the channels-last memory format")
