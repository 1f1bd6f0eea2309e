"""The value types of the command line's flags: each parses one argument or says, in one line, what it expects."""

from __future__ import annotations

import argparse

from convert.cli.flags import to_cli
from convert.errors import ConvertError
from convert.load import parse_input_shape, parse_model_arg
from convert.runtime.quantize import FORMATS

__all__ = ["batch_sizes", "floats", "formats", "model_arg", "rank", "resource", "shape"]


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes {text!r} are not valid: use positive sizes, e.g. 1,8")
    return sizes


def formats(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in FORMATS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"formats {text!r} are not valid: use names of {', '.join(FORMATS)}")
    return names


def resource(text: str) -> tuple[str, float]:
    name, equals, amount = text.partition("=")
    try:
        return name, float(amount) if equals else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=AMOUNT (e.g. edge-cpu=1)") from None


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not valid: use comma-separated numbers, e.g. 0.5,0.5,0.5"
        ) from None


def shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """'1,3,224,224' -> (None, (1, 3, 224, 224)); 'pixel_values=1,3,224,224' -> ("pixel_values", (1, 3, 224, 224))."""
    name, equals, dims = text.rpartition("=")
    if equals and not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: use N,C,... or NAME=N,C,..., e.g. x=1,3,224,224")
    try:
        return name or None, parse_input_shape(dims)
    except ConvertError as e:
        raise argparse.ArgumentTypeError(to_cli(str(e))) from e


def model_arg(text: str) -> tuple[str, object]:
    try:
        return parse_model_arg(text)
    except ConvertError as e:
        raise argparse.ArgumentTypeError(to_cli(str(e))) from e


def rank(text: str) -> int | str:
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rank {text!r} is not valid: use a positive integer or 'full'") from None
