"""What a distillation is asked to do (DistillConfig), and what it tells on the way (DistillEvent)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import torch

from convert.distill.data import DistillData
from convert.errors import ConvertError
from convert.report.schema import DistillMetrics
from convert.runtime.devices import DEVICES

__all__ = [
    "AMP_MODES",
    "BATCHNORM_MODES",
    "CURVE_POINTS",
    "DEFAULT_BATCHNORM",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FEATURE_WEIGHT",
    "DEFAULT_GRAD_CLIP",
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WARMUP",
    "DEFAULT_WEIGHT_DECAY",
    "EVALUATIONS",
    "LOSSES",
    "LOSS_WINDOW",
    "DistillConfig",
    "DistillEvent",
    "DistillProgress",
    "autocast_dtype",
    "total_steps",
]

DEFAULT_STEPS = 600
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 3e-3
DEFAULT_WEIGHT_DECAY = 0.0
DEFAULT_WARMUP = 0.05  # share of the steps with a linear warm-up of the learning rate
DEFAULT_FEATURE_WEIGHT = 1.0
DEFAULT_TEMPERATURE = 4.0
DEFAULT_BATCHNORM = "update"
DEFAULT_GRAD_CLIP = 1.0  # max gradient norm
EVALUATIONS = 10  # validations per run by default, besides the one before the first step
LOSS_WINDOW = 10  # steps averaged for the report's loss_start and loss_end
CURVE_POINTS = 200  # at most this many points of the training loss curve in the report
LOSSES: tuple[str, ...] = ("auto", "kl", "mse")
BATCHNORM_MODES: tuple[str, ...] = ("update", "freeze")
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """How to fine-tune. Override fields with `dataclasses.replace`."""

    # Optimizer steps; None: DEFAULT_STEPS, or what `epochs` makes. Mutually exclusive with `epochs`.
    steps: int | None = None
    # Passes over the training inputs (steps = ceil(epochs * inputs / batch_size)); not for synthetic data.
    epochs: float | None = None
    # Inputs per step, over all processes (each of W processes takes batch_size / W).
    batch_size: int = DEFAULT_BATCH_SIZE
    # Peak learning rate of AdamW: linear warm-up over `warmup` of the steps, then cosine decay to 0.
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    warmup: float = DEFAULT_WARMUP
    # Output loss: "auto" is KL with temperature for outputs shaped (N, classes), relative MSE for the others;
    # "kl" uses KL over dim 1 for every output (e.g. per-pixel class scores); "mse" relative MSE for all.
    loss: Literal["auto", "kl", "mse"] = "auto"
    temperature: float = DEFAULT_TEMPERATURE
    # Weight of the feature loss: relative MSE between each converted layer's output and the teacher's conv there.
    feature_weight: float = DEFAULT_FEATURE_WEIGHT
    # Student BatchNorm: "update" normalises with batch statistics and updates the running averages;
    # "freeze" keeps the running statistics (eval mode). Scale and shift are trained either way.
    batchnorm: Literal["update", "freeze"] = DEFAULT_BATCHNORM
    # Where to train (`convert.runtime.devices`): "auto" is CUDA when torch sees a GPU (cuda:LOCAL_RANK under
    # torchrun), else the CPU; "tensorrt" (ONNX Runtime's, for the benchmark) trains on CUDA.
    device: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    # Autocast on CUDA: "auto" is bf16 where supported, else fp16 (with loss scaling); the CPU trains in float32.
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    # Gradients are clipped to this norm; None: not clipped.
    grad_clip: float | None = DEFAULT_GRAD_CLIP
    # Steps between validations (the best weights are kept); None: EVALUATIONS per run.
    eval_every: int | None = None
    # Seeds the batch order and synthetic inputs: the same seed gives the same weights (bit for bit on the CPU).
    seed: int = 0
    # DataLoader worker processes (decoding images); 0: in the training process.
    workers: int = 0
    # Training processes, each taking its share of every batch (DDP): more than 1 trains with Ray Train on the Ray
    # cluster this process can reach (`convert serve --runner ray` gives its jobs one), a GPU each on CUDA. Under
    # torchrun leave it at 1: torchrun's processes train.
    processes: int = 1

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ConvertError("give either steps or epochs, not both")
        positive = {"steps": self.steps, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        positive |= {"temperature": self.temperature, "eval_every": self.eval_every, "grad_clip": self.grad_clip}
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ConvertError(f"{name} {value} is not valid: use a positive number")
        for name, value in (("feature_weight", self.feature_weight), ("weight_decay", self.weight_decay)):
            if not value >= 0:
                raise ConvertError(f"{name} {value} is not valid: use 0 or a positive number")
        if not 0 <= self.warmup < 1:
            raise ConvertError(f"warmup {self.warmup} is not valid: use a share of the steps in [0, 1)")
        choices = {"loss": LOSSES, "batchnorm": BATCHNORM_MODES, "device": DEVICES, "amp": AMP_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConvertError(f"{name} {getattr(self, name)!r} is not valid: use one of {', '.join(allowed)}")
        if self.seed < 0 or self.workers < 0:
            raise ConvertError("seed and workers are not valid below 0")
        if self.processes < 1:
            raise ConvertError(f"`processes`={self.processes} is not valid: use 1 or more")


@dataclasses.dataclass
class DistillEvent:
    """Progress of a distillation, for a progress bar or a stream of events (the gRPC service)."""

    kind: Literal["start", "step", "eval", "end"]
    step: int  # optimizer steps done
    total: int  # steps asked for
    loss: float | None = None  # "step": this step's training loss
    lr: float | None = None  # "step": the learning rate it used
    eta_seconds: float | None = None  # "step": time left, from the speed so far
    metrics: DistillMetrics | None = None  # "eval": the student against the teacher on the validation inputs
    message: str | None = None  # "start": what is trained where; "end": how it ended


DistillProgress = Callable[[DistillEvent], None]


def total_steps(config: DistillConfig, data: DistillData) -> int:
    """The steps of a run: `steps`, or what `epochs` of the training inputs make, or DEFAULT_STEPS.

    Raises:
        ConvertError: for `epochs` of synthetic inputs (they have no size).
    """
    if config.epochs is None:
        return config.steps or DEFAULT_STEPS
    if data.train_size is None:
        raise ConvertError("synthetic inputs have no epochs: give `steps` instead")
    return max(1, math.ceil(config.epochs * data.train_size / config.batch_size))


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `amp` mode `mode` on `device`; None: no autocast.

    Raises:
        ConvertError: for bf16 or fp16 off CUDA.
    """
    if device.type != "cuda":
        if mode in _AMP_DTYPES:
            raise ConvertError(f"`amp`={mode} runs on CUDA only: use `amp`=off (or auto) on the CPU")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _AMP_DTYPES.get(mode)
