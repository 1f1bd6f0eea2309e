"""The `convert` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from convert.artifacts import output_files
from convert.auto.planner import AutoConfig
from convert.cli import jobs
from convert.distill.config import (
    AMP_MODES,
    BATCHNORM_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FEATURE_WEIGHT,
    DEFAULT_LR,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
    LOSSES,
    DistillConfig,
    DistillEvent,
    DistillProgress,
)
from convert.distill.data import SYNTHETIC
from convert.distill.parallel import is_main_process
from convert.errors import ConvertError
from convert.job import DistillJob, JobOptions, example_inputs, run_job
from convert.load import DTYPES, LoadedModel, load_model, parse_input_shape
from convert.report.schema import format_count, format_ratio, plot_benchmark
from convert.runtime.bench import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP, BenchConfig, benchmark_onnx
from convert.runtime.devices import DEVICES
from convert.runtime.export import DEFAULT_ATOL, OnnxConfig, ParityError
from convert.surgery.config import TARGETS, TRANSPOSED_FORMS, ConvertConfig
from convert.surgery.pipeline import inspect_model

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_PARITY = 3  # ONNX Runtime does not match PyTorch: the files are kept in OUTDIR.failed-parity/
EXIT_DISTILL_NAN = 4  # the distillation loss was not finite: OUTDIR has the last good weights
EXIT_INTERRUPTED = 130  # Ctrl-C
SUBCOMMANDS = ("inspect", "bench", "jobs")

# Piped output keeps a readable table width instead of rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        from server.cli import main as serve  # the gRPC service, with options of its own

        return serve(argv[1:])
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "convert"
    parser, run = {
        "convert": (_convert_parser, _run_convert),
        "inspect": (_inspect_parser, _run_inspect),
        "bench": (_bench_parser, _run_bench),
        "jobs": (jobs.parser, jobs.run),  # a server's jobs (convert/cli/jobs.py)
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
        return EXIT_INTERRUPTED
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
        "`convert bench A.onnx [B.onnx ...]` times ONNX files side by side; "
        "`convert serve [--port 50051] [--data-dir DIR]` runs the gRPC service (see `convert serve --help`).",
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
    _benchmark_arguments(
        bench,
        device_help="where to distill (torch: auto is CUDA when torch sees a GPU; tensorrt trains on CUDA) and to "
        "benchmark (ONNX Runtime provider: auto is CUDA when a session really runs there); default: auto",
    )
    auto = parser.add_argument_group(
        "latency-aware planning (--to auto; implies --benchmark, on the --device and --threads above)"
    )
    auto.add_argument(
        "--target-speedup",
        type=float,
        metavar="X",
        help=f"end-to-end speedup to reach at the least error (default: {AutoConfig.target_speedup:g})",
    )
    auto.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="never give a layer a form whose output error (relative, on the example input) is above E",
    )
    auto.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where layer latencies are cached (default: $CONVERT_CACHE_DIR or ~/.cache/convert/latency)",
    )
    service = parser.add_argument_group("service (convert on a `convert serve` server instead of here)")
    service.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="upload the model and any --distill/--val tensor files (their bytes, not loaded here) and convert it "
        "there; results are downloaded into OUTDIR",
    )
    service.add_argument(
        "--auth-token",
        default=os.environ.get("CONVERT_AUTH_TOKEN"),
        help="the server's token (default: $CONVERT_AUTH_TOKEN)",
    )
    service.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's CAs")
    service.add_argument("--tls-ca", type=Path, metavar="PEM", help="speak TLS, trusting this CA certificate")
    _distill_arguments(parser.add_argument_group("distillation (fine-tune the converted model to match the original)"))
    return parser


def _distill_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of --distill; each defaults to None so that one given without --distill is caught."""
    group.add_argument(
        "--distill",
        action="append",
        metavar="DATA",
        help=f"unlabeled inputs: '{SYNTHETIC}', a folder of images (ImageFolder layout or flat), or a tensor file "
        "shaped (N, ...) (.pt, .npy, .npz, .safetensors); repeat for a file per model input",
    )
    group.add_argument(
        "--val",
        action="append",
        metavar="DATA",
        help="validation inputs, in the same forms (default: 10%% of DATA held out, at most 1000)",
    )
    length = group.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help=f"optimizer steps (default: {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=float, metavar="E", help="passes over DATA instead of --steps")
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help=f"inputs per step, over all processes (default: {DEFAULT_BATCH_SIZE})",
    )
    group.add_argument(
        "--lr", type=float, help=f"peak learning rate, AdamW with warm-up and cosine decay (default: {DEFAULT_LR:g})"
    )
    group.add_argument(
        "--feature-weight",
        type=float,
        metavar="W",
        help="weight of matching each converted layer's output to the original conv's "
        f"(default: {DEFAULT_FEATURE_WEIGHT:g}; 0: outputs only)",
    )
    group.add_argument(
        "--loss",
        choices=LOSSES,
        help="output loss: auto (KL for outputs shaped N x classes, else relative MSE), kl, mse (default: auto)",
    )
    group.add_argument(
        "--temperature", type=float, metavar="T", help=f"of the KL loss (default: {DEFAULT_TEMPERATURE:g})"
    )
    group.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        help="student BatchNorm: update (batch statistics, running averages updated) or freeze (default: update)",
    )
    group.add_argument("--amp", choices=AMP_MODES, help="autocast on CUDA: auto is bf16 where supported, else fp16")
    group.add_argument("--seed", type=int, metavar="S", help="batch order and synthetic inputs (default: 0)")
    group.add_argument("--workers", type=int, metavar="N", help="DataLoader processes decoding images (default: 0)")
    group.add_argument(
        "--image-mean",
        type=_floats,
        metavar="M,M,M",
        help="per channel, for image folders (default: ImageNet's for 3 channels, else 0.5)",
    )
    group.add_argument("--image-std", type=_floats, metavar="S,S,S", help="per channel (default: ImageNet's or 0.5)")
    group.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue from OUTDIR/distill-checkpoint.pt, which every distillation writes",
    )


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


def _benchmark_arguments(
    group: argparse._ArgumentGroup,
    device_help: str = "ONNX Runtime provider (default: auto, CUDA when a session really runs there, else CPU)",
) -> None:
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
    options = _job_options(args)
    outdir = args.output or _default_outdir(args.model, options.config.target)
    with _progress_bar() as progress:
        if args.server:
            from server.client import ConvertClient  # grpc is imported only for remote runs

            with ConvertClient(args.server, auth_token=args.auth_token, tls=args.tls, tls_ca=args.tls_ca) as client:
                report = client.run(options, outdir, progress=progress, on_warning=_warn)
        else:
            printer = _distill_printer(quiet=args.json, bar=progress is not None)
            report = run_job(options, outdir, progress=progress, on_warning=_warn, on_event=printer)
    if options.distill is not None and not is_main_process():
        return 0  # a torchrun worker: rank 0 writes OUTDIR and prints
    code = _distill_exit_status(report.distill)
    if args.json:
        print(report.to_json())
        if code:
            stderr.print(f"[yellow]warning:[/yellow] {escape(report.distill.message)}", highlight=False, soft_wrap=True)
        return code
    stdout.print(report.table())
    if report.benchmark is not None:
        stdout.print(report.benchmark.table())
    if report.onnx is not None:
        worst = ", ".join(
            f"{e.path} {max(p.max_rel for p in e.parity):.2g}" for e in (report.onnx.original, report.onnx.converted)
        )
        stderr.print(
            f"ONNX Runtime matches PyTorch: max rel. diff {escape(worst)} (--atol {report.onnx.atol:g})",
            highlight=False,
            soft_wrap=True,
        )
    if report.auto is not None:
        for note in report.auto.notes:
            stderr.print(f"[yellow]warning:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
        measured = next((s.speedup for s in report.benchmark.speedup if s.batch == report.input_shapes[0][0]), None)
        stderr.print(
            f"--to auto: target {report.auto.target_speedup:g}x, predicted {report.auto.predicted_speedup:.2f}x"
            + (f", measured {measured:.2f}x" if measured else ""),
            highlight=False,
        )
    if report.distill is not None:
        stderr.print(_distill_summary(report.distill), highlight=False, soft_wrap=True)
    stderr.print(f"wrote {escape(str(outdir))}/ ({', '.join(output_files(report))})", highlight=False, soft_wrap=True)
    return code


# --distill options that are DistillConfig fields (same names), then the others
_DISTILL_CONFIG_OPTIONS = (
    "steps",
    "epochs",
    "batch_size",
    "lr",
    "feature_weight",
    "loss",
    "temperature",
    "batchnorm",
    "amp",
    "seed",
    "workers",
)
_DISTILL_OPTIONS = (*_DISTILL_CONFIG_OPTIONS, "val", "image_mean", "image_std", "resume")


def _distill_options(args: argparse.Namespace) -> DistillJob | None:
    """The --distill settings; None without --distill (then none of its options may be given)."""
    if not args.distill:
        given = [name for name in _DISTILL_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ConvertError(f"--{given[0].replace('_', '-')} goes with --distill DATA: add --distill")
        return None
    fields = {name: getattr(args, name) for name in _DISTILL_CONFIG_OPTIONS if getattr(args, name) is not None}
    device = "cuda" if args.device == "tensorrt" else args.device  # TensorRT is ONNX Runtime's: train on CUDA
    return DistillJob(
        data=tuple(args.distill),
        config=DistillConfig(device=device, **fields),
        val=None if args.val is None else tuple(args.val),
        image_mean=args.image_mean,
        image_std=args.image_std,
        resume=bool(args.resume),
    )


def _distill_printer(quiet: bool, bar: bool) -> DistillProgress:
    """What is trained where, and (without a progress bar) a line per validation; nothing with --json."""
    quiet = quiet or not is_main_process()

    def show(event: DistillEvent) -> None:
        if event.kind == "eval" and not bar and not quiet:
            stderr.print(f"step {event.step}/{event.total}: validation {_metrics(event.metrics)}", highlight=False)
        elif event.kind == "start" and not quiet:
            stderr.print(escape(event.message or ""), highlight=False)

    return show


def _metrics(metrics) -> str:
    agreement = "" if metrics.top1_agreement is None else f", top-1 agreement {metrics.top1_agreement:.1%}"
    return f"output rel. error {metrics.output_rel_error:.3g}{agreement}"


def _distill_summary(distill) -> str:
    return (
        f"distilled {distill.steps}/{distill.total_steps} steps in {distill.seconds:.1f} s "
        f"({distill.steps_per_second:.3g} steps/s): {_metrics(distill.before)} -> {_metrics(distill.after)}"
        f"{'; on synthetic inputs: accuracy on real data is unknown' if distill.synthetic else ''}; "
        f"{escape(distill.message)}"
    )


def _distill_exit_status(distill) -> int:
    """0, or the status of a distillation that stopped early (its results are written all the same)."""
    if distill is None or distill.status == "completed":
        return 0
    return EXIT_DISTILL_NAN if distill.status == "nan" else EXIT_INTERRUPTED


def _job_options(args: argparse.Namespace) -> JobOptions:
    config = _config(args)
    auto = _auto_options(args, config.target)
    bench = _bench_config(args) if args.benchmark or auto else None
    if not (args.onnx or bench) and (args.opset is not None or args.static_shapes):
        raise ConvertError("--opset and --static-shapes go with --onnx or --benchmark: add --onnx")
    return JobOptions(
        model=args.model,
        weights=args.weights,
        input_shapes=tuple(args.input_shape) if args.input_shape else None,
        input_dtype=args.input_dtype,
        config=config,
        onnx=OnnxConfig(args.opset, not args.static_shapes, args.atol) if args.onnx or bench else None,
        bench=bench,
        auto=auto,
        distill=_distill_options(args),
    )


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


def _warn(message: str) -> None:
    stderr.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def _load(args: argparse.Namespace) -> LoadedModel:
    return load_model(args.model, args.weights, on_warning=_warn)


def _inputs(args: argparse.Namespace, loaded: LoadedModel):
    return example_inputs(loaded, args.input_shape, args.input_dtype)


def _default_outdir(model: str, target: str) -> Path:
    path = Path(model)
    if path.exists():
        return path.with_name(f"{path.stem}-{target}")
    return Path(f"{model.rpartition(':')[2].rpartition('.')[2]}-{target}")


def _auto_options(args: argparse.Namespace, target: str) -> AutoConfig | None:
    """The --to auto settings; None for the other targets (then none of its options may be given)."""
    if target != "auto":
        given = [name for name in ("target_speedup", "max_error", "cache_dir") if getattr(args, name) is not None]
        if given:
            raise ConvertError(f"--{given[0].replace('_', '-')} goes with --to auto: add --to auto")
        return None
    return AutoConfig(
        target_speedup=AutoConfig.target_speedup if args.target_speedup is None else args.target_speedup,
        max_error=args.max_error,
        device=args.device,
        threads=args.threads,
        cache_dir=args.cache_dir,
    )


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


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: use comma-separated numbers, e.g. 0.5,0.5,0.5"
        ) from None


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
