"""The state of a distillation run, which is its checkpoint: `RunState` and the checkpoint file.

The checkpoint is `{"version": CHECKPOINT_VERSION, **fields of RunState}`, the weights and optimizer state as
state dicts and the metrics as plain dicts, so that `torch.load(weights_only=True)` reads it (no code).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convert.distill.config import DistillConfig
from convert.distill.losses import Scales
from convert.errors import ConvertError, one_line
from convert.report.schema import DistillMetrics

__all__ = ["CHECKPOINT_VERSION", "RunState", "Snapshot", "load_checkpoint"]

CHECKPOINT_VERSION = 1

Weights = dict[str, torch.Tensor]  # a state dict, on the CPU


@dataclasses.dataclass
class RunState:
    """Everything a run has done and all that a resume needs; its fields are the checkpoint's keys, in order."""

    step: int  # optimizer steps done
    total_steps: int  # steps this run is asked for
    student: nn.Module  # the model being trained (the checkpoint holds its state dict)
    optimizer: torch.optim.Optimizer  # AdamW (the checkpoint holds its state dict, or None after a NaN)
    scaler: torch.amp.GradScaler  # fp16 loss scaling, disabled otherwise (likewise)
    history: list[float]  # the training loss of every step
    val_curve: list[list[float]]  # [step, validation loss] of every validation
    before: DistillMetrics | None  # the student before the first step; None until measured
    best: Weights | None  # the weights of the best validation so far
    best_step: int  # the step of `best`
    best_metrics: DistillMetrics | None  # the validation of `best`
    scales: Scales  # the losses' units, measured once per run (a resume keeps them)
    config: DistillConfig  # the options of this run (recorded, not read back)

    @classmethod
    def new(
        cls,
        total: int,
        student: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        scales: Scales,
        config: DistillConfig,
    ) -> RunState:
        """The state before the first step."""
        return cls(0, total, student, optimizer, scaler, [], [], None, None, 0, None, scales, config)

    @classmethod
    def resume(
        cls,
        saved: dict[str, Any],
        total: int,
        student: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        config: DistillConfig,
    ) -> RunState:
        """The state of checkpoint `saved`, its weights and optimizer state loaded into `student`, `optimizer`
        and `scaler`.

        Raises:
            ConvertError: when the checkpoint does not fit the student (another conversion or rank).
        """
        try:
            student.load_state_dict(saved["student"])
            if saved.get("optimizer") is not None:
                optimizer.load_state_dict(saved["optimizer"])
                scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConvertError(
                f"the checkpoint does not fit this conversion ({one_line(e)}): resume with the options that wrote "
                "it, or run without `resume`"
            ) from e
        return cls(
            step=int(saved["step"]),
            total_steps=total,
            student=student,
            optimizer=optimizer,
            scaler=scaler,
            history=list(saved["history"]),
            val_curve=[list(point) for point in saved["val_curve"]],
            before=DistillMetrics(**saved["before"]),
            best=saved["best"],
            best_step=int(saved["best_step"]),
            best_metrics=DistillMetrics(**saved["best_metrics"]),
            scales=Scales(list(saved["scales"]["outputs"]), dict(saved["scales"]["features"])),
            config=config,
        )

    def record_step(self, loss: float) -> None:
        """One more step done, with its training loss."""
        self.step += 1
        self.history.append(loss)

    def record_validation(self, step: int, metrics: DistillMetrics) -> None:
        """A validation at `step`; its weights become `best` when its loss is the lowest so far."""
        self.val_curve.append([step, metrics.loss])
        if self.best is None or metrics.loss < self.best_metrics.loss:
            self.best = _cpu_copy(self.student)
            self.best_step, self.best_metrics = step, metrics

    def rewind(self, snapshot: Snapshot) -> None:
        """Back to the weights of `snapshot` (the last ones whose loss was finite), forgetting later steps."""
        snapshot.restore()
        self.step = snapshot.step
        del self.history[snapshot.step :]
        self.val_curve = [point for point in self.val_curve if point[0] <= snapshot.step]

    def checkpoint(self, *, with_optimizer: bool) -> dict[str, Any]:
        """The checkpoint of this state; `with_optimizer` False leaves the optimizer and scaler out (None)."""
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "total_steps": self.total_steps,
            "student": _cpu_copy(self.student),
            "optimizer": self.optimizer.state_dict() if with_optimizer else None,
            "scaler": self.scaler.state_dict() if with_optimizer else None,
            "history": self.history,
            "val_curve": self.val_curve,
            "before": dataclasses.asdict(self.before),
            "best": self.best,
            "best_step": self.best_step,
            "best_metrics": dataclasses.asdict(self.best_metrics),
            "scales": dataclasses.asdict(self.scales),
            "config": dataclasses.asdict(self.config),
        }


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a distillation checkpoint (weights_only: it holds tensors and numbers, no code).

    Raises:
        ConvertError: when it is missing, unreadable, or not a distillation checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"no distillation checkpoint at {path}: run without `resume` first (it writes one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to read is a bad file
        raise ConvertError(f"cannot read the checkpoint {path} ({one_line(e)}): run without `resume`") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConvertError(f"{path} is not a distillation checkpoint of this version: run without `resume`")
    return state


class Snapshot:
    """A copy of a model's parameters and buffers, taken before each update: the last good weights."""

    def __init__(self, model: nn.Module, step: int) -> None:
        self.live = list(model.state_dict().values())
        self.saved = [t.detach().clone() for t in self.live]
        self.step = step  # updates done to the saved weights

    def take(self, step: int) -> None:
        with torch.no_grad():
            for saved, live in zip(self.saved, self.live, strict=True):
                saved.copy_(live)
        self.step = step

    def restore(self) -> None:
        with torch.no_grad():
            for saved, live in zip(self.saved, self.live, strict=True):
                live.copy_(saved)


def _cpu_copy(model: nn.Module) -> Weights:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
