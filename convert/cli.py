"""The `convert` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from convert.bench import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP, DEVICES, BenchConfig, benchmark_onnx
from convert.config import TARGETS, TRANSPOSED_FORMS, ConvertConfig
from convert.errors import ConvertError
from convert.load import DTYPES, LoadedModel, load_model, make_inputs, parse_input_shape
from convert.onnx_export import DEFAULT_ATOL, OnnxConfig, ParityError
from convert.pipeline import convert_model, inspect_model
from convert.report import format_count, format_ratio, plot_benchmark
from convert.save import check_save_options, save_result

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_PARITY = 3  # ONNX Runtime does not match PyTorch: the files are kept in OUTDIR.failed-parity/
SUBCOMMANDS = ("inspect", "bench")

# Piped output keeps a readable table width instead of rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "convert"
    parser, run = {
        "convert": (_convert_parser, _run_convert),
        "inspect": (_inspect_parser, _run_inspect),
        "bench": (_bench_parser, _run_bench),
    }[command]
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")  # torch's tracing and export warnings are not the user's business
    try:
        return run(args)
    except ParityError as e:
        stderr.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_PARITY
    except ConvertError as e:
        stderr.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        stderr.print("interrupted: nothing was written")
        return 130
    except Exception as e:  # noqa: BLE001 - a bug: one line unless --verbose
        if args.verbose:
            raise
        stderr.print(
            f"[red]internal error:[/red] {type(e).__name__}: {escape(str(e))} (rerun with --verbose for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_INTERNAL


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (the full usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("model")
    source.add_argument(
        "model",
        help="package.module:callable (e.g. torchvision.models:resnet18), a .pt2 archive "
        "(torch.export.save), or a whole-model pickle (torch.save(model))",
    )
    source.add_argument(
        "--weights",
        help="state dict for a factory-built model (.safetensors, or .pt/.pth loaded with weights_only=True)",
    )
    source.add_argument(
        "--input-shape",
        action="append",
        type=_shape,
        metavar="N,C,...",
        help="example input shape, repeat for several inputs (default: the .pt2's example inputs)",
    )
    source.add_argument("--input-dtype", default="float32", choices=list(DTYPES), help="default: float32")
    options = parser.add_argument_group("conversion")
    options.add_argument("--to", dest="target", default="separable", choices=TARGETS, help="default: separable")
    rank = options.add_mutually_exclusive_group()
    rank.add_argument(
        "--rank",
        type=_rank,
        help="filters per group: N or 'full' (exact); default 1 for "
        "separable, C_out/groups for grouped; clamped to full rank",
    )
    rank.add_argument(
        "--energy",
        type=float,
        help="per layer, the smallest rank keeping this fraction of the spectral energy, e.g. 0.95",
    )
    options.add_argument("--groups", type=int, help="groups for --to grouped (must divide C_in)")
    options.add_argument(
        "--no-pointwise",
        dest="pointwise",
        action="store_false",
        help="--to grouped: keep W's block diagonal as one grouped conv, no 1x1 after it (lossy)",
    )
    options.add_argument(
        "--transposed",
        default="separable",
        choices=TRANSPOSED_FORMS,
        help="transposed convs: depthwise transposed conv + 1x1 conv (exact at full rank), or skip them "
        "(default: separable)",
    )
    options.add_argument(
        "--include-grouped",
        action="store_true",
        help="also factorize convs that are grouped already (1 < groups < C_in), group by group",
    )
    options.add_argument("--include", metavar="REGEX", help="convert only layers whose name matches")
    options.add_argument("--exclude", metavar="REGEX", help="skip layers whose name matches")
    options.add_argument(
        "--min-channels",
        type=int,
        default=1,
        metavar="N",
        help="skip layers with fewer input or output channels (default: 1)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")


def _convert_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convert",
        description="Rewrite standard convolutions into depthwise-separable or grouped ones (truncated SVD). "
        "Subcommands: `convert inspect MODEL ...` shows what each target would save; "
        "`convert bench A.onnx [B.onnx ...]` times ONNX files side by side.",
    )
    _common_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUTDIR",
        help="folder for model.pt, report.json, report.md (default: next to the input, named after it and the target)",
    )
    output.add_argument("--json", action="store_true", help="print report.json on stdout, and nothing else")
    onnx = parser.add_argument_group("ONNX export (writes OUTDIR/original.onnx and OUTDIR/model.onnx)")
    onnx.add_argument(
        "--onnx",
        action="store_true",
        help="export both models and check ONNX Runtime against PyTorch on the example input and another batch size",
    )
    onnx.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    onnx.add_argument(
        "--static-shapes",
        action="store_true",
        help="fix every dim to the example input's (default: dynamic batch dimension)",
    )
    onnx.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help="parity tolerance: max |ORT - PyTorch| relative to max |PyTorch| per output "
        f"(default: {DEFAULT_ATOL:g}); above it the files go to OUTDIR.failed-parity/ and the exit status is 3",
    )
    bench = parser.add_argument_group("benchmark (implies --onnx)")
    bench.add_argument(
        "--benchmark",
        action="store_true",
        help="time original.onnx and model.onnx side by side on ONNX Runtime; adds a table and benchmark.png",
    )
    _benchmark_arguments(bench)
    return parser


def _bench_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convert bench",
        description="Time ONNX files side by side on ONNX Runtime (alternating run by run); "
        "speedups are relative to the first file.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.onnx", help="ONNX models to time")
    options = parser.add_argument_group("benchmark")
    _benchmark_arguments(options)
    options.add_argument("--json", action="store_true", help="print the results as JSON on stdout, and nothing else")
    options.add_argument("--plot", type=Path, metavar="PNG", help="also write a plot of latency per batch size")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    return parser


def _benchmark_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--device",
        default="auto",
        choices=DEVICES,
        help="ONNX Runtime provider (default: auto, CUDA when a session really runs there, else CPU)",
    )
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
        type=_batch_sizes,
        default=DEFAULT_BATCH_SIZES,
        metavar="B,B,...",
        help="batch sizes to time (default: 1)",
    )


def _inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convert inspect",
        description="Per standard conv: what separable (and grouped, with --groups) would save. Writes nothing.",
    )
    _common_arguments(parser)
    return parser


def _run_convert(args: argparse.Namespace) -> int:
    config = _config(args)
    bench = _bench_config(args) if args.benchmark else None
    if not (args.onnx or bench) and (args.opset is not None or args.static_shapes):
        raise ConvertError("--opset and --static-shapes go with --onnx or --benchmark: add --onnx")
    onnx = OnnxConfig(args.opset, not args.static_shapes, args.atol) if args.onnx or bench else None
    outdir = args.output or _default_outdir(args.model, config.target)
    check_save_options(outdir, None, onnx, bench)  # before the work, so a bad -o or --device costs nothing
    loaded = _load(args)
    inputs = _inputs(args, loaded)
    check_save_options(outdir, inputs, onnx, bench)
    with stderr.status("converting...") as status:
        result = convert_model(
            loaded.model,
            inputs,
            config,
            exported=loaded.exported,
            progress=lambda stage, fraction: status.update(f"converting: {stage} ({fraction:.0%})"),
        )
    with _progress_bar(enabled=onnx is not None) as progress:
        save_result(
            result, outdir, original=loaded.model, example_inputs=inputs, onnx=onnx, benchmark=bench, progress=progress
        )
    report = result.report
    if args.json:
        print(report.to_json())
        return 0
    stdout.print(report.table())
    if report.benchmark is not None:
        stdout.print(report.benchmark.table())
    files = ["model.pt", "report.json", "report.md"]
    if report.onnx is not None:
        files += [report.onnx.original.path, report.onnx.converted.path]
        worst = ", ".join(
            f"{e.path} {max(p.max_rel for p in e.parity):.2g}" for e in (report.onnx.original, report.onnx.converted)
        )
        stderr.print(
            f"ONNX Runtime matches PyTorch: max rel. diff {escape(worst)} (--atol {report.onnx.atol:g})",
            highlight=False,
            soft_wrap=True,
        )
    if report.benchmark is not None:
        files.append("benchmark.png")
    stderr.print(f"wrote {escape(str(outdir))}/ ({', '.join(files)})", highlight=False, soft_wrap=True)
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    config = _bench_config(args)
    with _progress_bar() as progress:
        result = benchmark_onnx(args.files, config, names=[str(f) for f in args.files], progress=progress)
    if args.plot:
        plot_benchmark(result, args.plot)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        stdout.print(result.table())
    return 0


@contextlib.contextmanager
def _progress_bar(enabled: bool = True) -> Iterator[Callable[[str, float], None] | None]:
    """A progress bar on stderr, fed with (what is running, fraction done)."""
    if not enabled or not stderr.is_terminal:  # a log file gets no bar, not even a blank line
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda what, fraction: bar.update(task, description=escape(what), completed=fraction)


def _run_inspect(args: argparse.Namespace) -> int:
    loaded = _load(args)
    inputs = _inputs(args, loaded)
    configs = {"separable": _config(args, target="separable", groups=None, pointwise=True)}
    if args.groups:
        configs[f"grouped g{args.groups}"] = _config(args, target="grouped")
    views = inspect_model(loaded.model, inputs, list(configs.values()))
    table = Table(title="standard convolutions and what each target would save")
    for column in ("layer", "kernel", "channels", "output HxW", "recept. field", "params", "MACs"):
        table.add_column(column, justify="right" if column in ("params", "MACs") else "left")
    for label in configs:
        table.add_column(f"{label}: MACs", justify="right")
        table.add_column("error", justify="right")
    for index, row in enumerate(views[0]):
        cells = [
            escape(row.name),
            "x".join(map(str, row.kernel or [])),
            f"{row.in_channels}->{row.out_channels}",
            "x".join(map(str, (row.output_shape or [])[2:])),
            "x".join(map(str, row.receptive_field or [])) or "?",
            format_count(row.params_before),
            format_count(row.macs_before),
        ]
        for view in views:
            other = view[index]
            if other.status == "converted":
                cells += [
                    f"{format_count(other.macs_after)} ({format_ratio(other.macs_before, other.macs_after)})",
                    f"{other.weight_rel_error:.3f}",
                ]
            else:
                cells += [f"[dim]{escape(str(other.reason))}[/dim]", ""]
        table.add_row(*cells)
    stdout.print(table)
    if not args.groups:
        stderr.print("add --groups G to see the grouped target too")
    return 0


def _config(args: argparse.Namespace, **overrides: object) -> ConvertConfig:
    fields = dict(
        target=args.target,
        rank=args.rank,
        energy=args.energy,
        groups=args.groups,
        pointwise=args.pointwise,
        include=args.include,
        exclude=args.exclude,
        min_channels=args.min_channels,
        transposed=args.transposed,
        include_grouped=args.include_grouped,
    )
    return ConvertConfig(**(fields | overrides))


def _load(args: argparse.Namespace) -> LoadedModel:
    return load_model(
        args.model,
        args.weights,
        on_warning=lambda message: stderr.print(
            f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True
        ),
    )


def _inputs(args: argparse.Namespace, loaded: LoadedModel):
    if args.input_shape:
        return make_inputs(args.input_shape, args.input_dtype)
    if loaded.example_inputs is not None:
        return loaded.example_inputs
    raise ConvertError("the example input shape is unknown: add --input-shape, e.g. --input-shape 1,3,224,224")


def _default_outdir(model: str, target: str) -> Path:
    path = Path(model)
    if path.exists():
        return path.with_name(f"{path.stem}-{target}")
    return Path(f"{model.rpartition(':')[2].rpartition('.')[2]}-{target}")


def _bench_config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        device=args.device,
        threads=args.threads,
        warmup=args.warmup,
        runs=args.runs,
        duration=args.duration,
        batch_sizes=args.batch_sizes,
    )


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes {text!r} are not valid: use positive sizes, e.g. 1,8")
    return sizes


def _shape(text: str) -> tuple[int, ...]:
    try:
        return parse_input_shape(text)
    except ConvertError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _rank(text: str) -> int | str:
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rank {text!r} is not valid: use a positive integer or 'full'") from None


if __name__ == "__main__":
    sys.exit(main())
