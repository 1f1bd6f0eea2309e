"""The object that flows through a job's stages: what was given, what was made of it, and the record of it."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from convert.report.schema import Report
from convert.surgery.apply import AppliedLayer, plan_document

__all__ = ["Conversion"]


@dataclasses.dataclass
class Conversion:
    """One conversion: the user's model and example inputs, the converted model, and its report.

    `convert_model` makes one; the later stages (distill, export, benchmark) take it and fill in their part of
    `report`; `save_result` writes it.
    """

    original: nn.Module  # the user's model, as given: no stage changes it
    inputs: tuple[torch.Tensor, ...]  # the example inputs every stage checks against
    model: nn.Module  # the converted model
    report: Report
    # converted layer name (as in the report) -> module path of its replacement in `model`; the two differ
    # for functional convs, whose replacement is a new submodule
    replaced: dict[str, str] = dataclasses.field(default_factory=dict)
    # distillation state (optimizer, step, best weights) that `save_result` writes for a later resume
    checkpoint: dict[str, Any] | None = None
    # the converted layers, as plan.json records them (`convert.apply_plan` rebuilds the architecture from them)
    applied: list[AppliedLayer] = dataclasses.field(default_factory=list)

    def plan(self) -> dict[str, Any]:
        """What plan.json holds: every converted layer's place, conv and form, and the versions."""
        return plan_document(self.applied, self.report.versions)
