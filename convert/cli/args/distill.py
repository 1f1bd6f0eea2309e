"""The arguments of distillation (--distill) and of layer-wise calibration (--calibrate)."""

from __future__ import annotations

import argparse

from convert.cli import argtypes
from convert.distill.config import (
    AMP_MODES,
    BATCHNORM_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FEATURE_WEIGHT,
    DEFAULT_LR,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
    LOSSES,
)
from convert.distill.data import SYNTHETIC
from convert.runtime.quantize import DEFAULT_CALIBRATION_SAMPLES
from convert.surgery.calibrate import DEFAULT_SAMPLES

__all__ = ["calibration_arguments", "distill_arguments"]


def distill_arguments(group: argparse._ArgumentGroup) -> None:
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
        "--processes",
        type=int,
        metavar="N",
        help="training processes sharing every batch (DDP), as Ray Train workers on the Ray cluster of RAY_ADDRESS "
        "or of the --server (default: 1; under torchrun leave it out)",
    )
    group.add_argument(
        "--image-mean",
        type=argtypes.floats,
        metavar="M,M,M",
        help="per channel, for image folders (default: ImageNet's for 3 channels, else 0.5)",
    )
    group.add_argument(
        "--image-std", type=argtypes.floats, metavar="S,S,S", help="per channel (default: ImageNet's or 0.5)"
    )
    group.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue from OUTDIR/distill-checkpoint.pt, which every distillation writes",
    )


def calibration_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of --calibrate (the data may be --distill's)."""
    group.add_argument(
        "--calibrate",
        action="append",
        nargs="?",
        const="",
        metavar="DATA",
        help=f"unlabeled inputs in --distill's forms ('{SYNTHETIC}', a folder of images, a tensor file; repeat for a "
        "file per model input); without DATA: the --distill data. Each converted layer is fitted, in execution "
        "order, to reproduce the original layer's outputs from its inputs in the model converted so far; "
        "--quantize int8 calibrates its activation ranges on the same DATA",
    )
    group.add_argument(
        "--calibration-samples",
        type=int,
        metavar="N",
        help=f"calibrate on at most N inputs (default: {DEFAULT_SAMPLES}, a seeded random choice of more; "
        f"--quantize: {DEFAULT_CALIBRATION_SAMPLES})",
    )
