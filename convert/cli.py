"""The `convert` command: parse arguments, call the library, print. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from convert.config import TARGETS, ConvertConfig
from convert.errors import ConvertError
from convert.load import DTYPES, LoadedModel, load_model, make_inputs, parse_input_shape
from convert.pipeline import convert_model, inspect_model
from convert.report import format_count, format_ratio
from convert.save import check_outdir, save_result

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
SUBCOMMANDS = ("inspect",)

# Piped output keeps a readable table width instead of rich's 80-column default.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "convert"
    parser = _inspect_parser() if command == "inspect" else _convert_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")  # torch's tracing and export warnings are not the user's business
    try:
        return _run_inspect(args) if command == "inspect" else _run_convert(args)
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
        "Subcommands: `convert inspect MODEL ...` shows what each target would save.",
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
    return parser


def _inspect_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="convert inspect",
        description="Per standard conv: what separable (and grouped, with --groups) would save. Writes nothing.",
    )
    _common_arguments(parser)
    return parser


def _run_convert(args: argparse.Namespace) -> int:
    config = _config(args)
    outdir = args.output or _default_outdir(args.model, config.target)
    check_outdir(outdir)  # before the work, so a bad -o costs nothing
    loaded = _load(args)
    inputs = _inputs(args, loaded)
    with stderr.status("converting...") as status:
        result = convert_model(
            loaded.model,
            inputs,
            config,
            exported=loaded.exported,
            progress=lambda stage, fraction: status.update(f"converting: {stage} ({fraction:.0%})"),
        )
    save_result(result, outdir)
    if args.json:
        print(result.report.to_json())
    else:
        stdout.print(result.report.table())
        stderr.print(
            f"wrote {escape(str(outdir))}/ (model.pt, report.json, report.md)", highlight=False, soft_wrap=True
        )
    return 0


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
