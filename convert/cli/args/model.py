"""The model and its conversion: the arguments `convert` and `convert inspect` share, and `convert inspect`'s parser."""

from __future__ import annotations

import argparse

from convert.cli import argtypes
from convert.cli.args.base import Parser, examples, logging_arguments, switch
from convert.forward import MODEL_DTYPES
from convert.load import DTYPES
from convert.surgery.config import TARGETS, TRANSPOSED_FORMS

__all__ = ["input_arguments", "inspect_parser", "model_arguments"]


def input_arguments(group: argparse._ActionsContainer, shape_help: str) -> None:
    """The example inputs: their shapes and dtype (`convert`, `convert inspect`, `convert bench --runtime torch`)."""
    group.add_argument("--input-shape", action="append", type=argtypes.shape, metavar="N,C,...", help=shape_help)
    group.add_argument("--input-dtype", default="float32", choices=list(DTYPES), help="default: float32")


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the conversion: what `convert` and `convert inspect` share."""
    source = parser.add_argument_group("model")
    source.add_argument(
        "model",
        help="package.module:callable (e.g. torchvision.models:resnet18), timm:NAME (timm.create_model) or "
        "torchvision:NAME (torchvision.models.get_model), never pretrained; a .pt2 archive (torch.export.save), "
        "or a whole-model pickle (torch.save(model))",
    )
    source.add_argument(
        "--weights",
        help="state dict for a factory-built model (.safetensors, or .pt/.pth loaded with weights_only=True)",
    )
    source.add_argument(
        "--model-arg",
        action="append",
        type=argtypes.model_arg,
        metavar="NAME=VALUE",
        help="a keyword argument of the factory, the value a Python literal (else a string); repeat for several, "
        "e.g. --model-arg num_classes=10 --model-arg in_chans=1",
    )
    input_arguments(
        source,
        "example input shape, repeat for several inputs; NAME=N,C,... names the forward parameter it is for "
        "(e.g. pixel_values=1,3,224,224), the names in the forward's order or any (default: the .pt2's example "
        "inputs)",
    )
    source.add_argument(
        "--dtype",
        dest="model_dtype",
        choices=list(MODEL_DTYPES),
        help="cast the model and its floating inputs to this dtype before converting; the ONNX files follow "
        "(default: the model's own)",
    )
    options = parser.add_argument_group("conversion")
    options.add_argument("--to", dest="target", default="separable", choices=TARGETS, help="default: separable")
    rank = options.add_mutually_exclusive_group()
    rank.add_argument(
        "--rank",
        type=argtypes.rank,
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
    switch(
        options,
        "--include-grouped",
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
    logging_arguments(parser)


def inspect_parser() -> argparse.ArgumentParser:
    """`convert inspect MODEL ...`: the model and conversion options of a job, nothing it would write."""
    parser = Parser(
        prog="convert inspect",
        description="Per standard conv: what separable (and grouped, with --groups) would save. Writes nothing.",
        epilog=examples(
            "convert inspect torchvision:resnet18 --input-shape 1,3,224,224 --groups 4",
            "convert inspect mynet:build --input-shape 1,3,32,32 --rank 2 --include '^layer' --json",
        ),
    )
    model_arguments(parser)
    switch(
        parser,
        "--json",
        help="print the rows as JSON on stdout ({target: [row per conv]}, the fields of report.json's layers)",
    )
    return parser
