"""The report of a distillation run (`DistillReport`): its figures, loss curves and notes, from its RunState."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import nn

from convert.conversion import Conversion
from convert.distill.config import CURVE_POINTS, LOSS_WINDOW, DistillConfig
from convert.distill.data import DistillData
from convert.distill.state import RunState
from convert.report.schema import DistillMetrics, DistillReport

__all__ = ["Ending", "RunFacts", "Seconds", "curve", "distill_report"]

_BATCHNORM = nn.modules.batchnorm._BatchNorm  # noqa: SLF001 - torch's one base of every BatchNorm module


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a run is, fixed from its start."""

    result: Conversion  # what was converted (its report names the converted layers)
    data: DistillData
    config: DistillConfig
    names: list[str]  # the converted layers with a feature site in the teacher
    kinds: list[str]  # the output loss of each output tensor: kl | mse
    device: torch.device  # this process's
    amp: torch.dtype | None  # the autocast dtype; None: none
    world: int  # processes
    resumed_from: int | None  # the step of the checkpoint resumed from; None: a new run
    warmup_steps: int


@dataclasses.dataclass(frozen=True)
class Ending:
    """How the run ended, and what it kept."""

    status: Literal["completed", "interrupted", "nan"]
    message: str
    kept_step: int  # the step of the weights kept
    after: DistillMetrics  # the weights kept, against the teacher


@dataclasses.dataclass
class Seconds:
    """Where the run's time went: steps (loading, forward, backward, update) and the rest (events, validation)."""

    train: float = 0.0
    eval: float = 0.0


def distill_report(state: RunState, facts: RunFacts, ending: Ending, seconds: Seconds, steps_run: int) -> DistillReport:
    """The report of a run that ended with `ending` after `steps_run` steps (in this process)."""
    config, data, history = facts.config, facts.data, state.history
    notes = []
    if data.synthetic:
        notes.append(
            "trained on synthetic (random) inputs: the figures are on "
            f"{data.val_source}; accuracy on real data is unknown"
        )
    unmatched = [row.name for row in facts.result.report.layers if row.status == "converted"]
    unmatched = [name for name in unmatched if name not in facts.names]
    if unmatched:
        notes.append(
            f"{len(unmatched)} converted layer(s) have no conv output in the original model to match "
            f"({', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''}): output loss only there"
        )
    has_batchnorm = any(isinstance(m, _BATCHNORM) for m in state.student.modules())
    if facts.world > 1 and config.batchnorm == "update" and has_batchnorm:
        notes.append("BatchNorm batch statistics are per process (DDP, no SyncBatchNorm)")
    if facts.resumed_from is not None:
        notes.append(f"resumed from the checkpoint of step {facts.resumed_from}")
    window = min(LOSS_WINDOW, len(history)) or 1
    return DistillReport(
        status=ending.status,
        message=ending.message,
        data=data.source,
        val_data=data.val_source,
        synthetic=data.synthetic,
        steps=state.step,
        total_steps=state.total_steps,
        resumed_from=facts.resumed_from,
        batch_size=config.batch_size,
        epochs=None if data.train_size is None else state.step * config.batch_size / data.train_size,
        lr=config.lr,
        warmup_steps=facts.warmup_steps,
        weight_decay=config.weight_decay,
        output_loss=list(facts.kinds),
        temperature=config.temperature,
        feature_weight=config.feature_weight,
        batchnorm=config.batchnorm,
        feature_layers=list(facts.names),
        unmatched_layers=unmatched,
        device=str(facts.device),
        amp=str(facts.amp).removeprefix("torch.") if facts.amp else None,
        world_size=facts.world,
        seed=config.seed,
        seconds=round(seconds.train, 3),
        steps_per_second=round(steps_run / seconds.train, 3) if seconds.train > 0 else 0.0,
        eval_seconds=round(seconds.eval, 3),
        loss_start=sum(history[:window]) / window if history else math.nan,
        loss_end=sum(history[-window:]) / window if history else math.nan,
        before=state.before,
        after=ending.after,
        best_step=ending.kept_step,
        curve=curve(history),
        val_curve=state.val_curve,
        notes=notes,
    )


def curve(history: list[float]) -> list[list[float]]:
    """[step, mean loss] over buckets of steps, at most CURVE_POINTS of them."""
    size = max(1, math.ceil(len(history) / CURVE_POINTS))
    return [
        [index + len(chunk), sum(chunk) / len(chunk)]
        for index in range(0, len(history), size)
        for chunk in [history[index : index + size]]
    ]
