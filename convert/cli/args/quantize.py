"""The arguments of INT8 quantization (--quantize)."""

from __future__ import annotations

import argparse

from convert.cli import argtypes
from convert.runtime.quantize import CALIBRATION_METHODS, DEFAULT_FORMATS, DEFAULT_MAX_QUANT_ERROR, FORMATS

__all__ = ["quantize_arguments"]


def quantize_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of --quantize; each defaults to None so that one given without --quantize is caught."""
    group.add_argument(
        "--quantize",
        choices=("int8",),
        help="quantize both ONNX files with ONNX Runtime (static, per-channel weights): every --quant-formats format "
        "is checked against float on held-out inputs and timed on --device; the fastest that passes is kept; with "
        "--to auto the plan is for the INT8 runtime",
    )
    group.add_argument(
        "--calibration-method", choices=list(CALIBRATION_METHODS), help="activation ranges (default: minmax)"
    )
    group.add_argument(
        "--quant-formats",
        type=argtypes.formats,
        metavar="F,F,...",
        help=f"candidate formats, of {', '.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)}; "
        "u8s7: 7-bit weights, for CPUs without VNNI)",
    )
    group.add_argument(
        "--max-quant-error",
        type=float,
        metavar="E",
        help="the check: largest relative output error of INT8 against float on held-out inputs "
        f"(default: {DEFAULT_MAX_QUANT_ERROR:g}); when no format passes, the files go to OUTDIR.failed-parity/ "
        "and the exit status is 3",
    )
