"""Feature sites: where a converted layer's output meets the teacher's conv output, read with forward hooks.

A converted layer's replacement is a submodule of the student (`Conversion.replaced`). In the teacher, the same
conv is the module of that name (fx, module walk and export graphs read `name.weight`); a functional conv of the
teacher (F.conv2d on its own weight, or a .pt2 graph) has no module to hook, so in a copy of the teacher those calls
become conv modules with the same weights, rewritten as the conversion rewrote them (an exact rewrite).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from convert.conversion import Conversion
from convert.distill.datasets import Batch, to_device
from convert.surgery.analysis import analyze, functional_as_modules
from convert.surgery.ops import ConvModule

__all__ = ["FeatureHooks", "FeatureSites", "feature_sites"]


class FeatureHooks:
    """Forward hooks that record the outputs of some modules, per call, until taken."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            self.outputs[name].append(output)

        return record

    def take(self) -> dict[str, list[torch.Tensor]]:
        """The outputs recorded since the last take, per module name and call."""
        outputs, self.outputs = self.outputs, {name: [] for name in self.outputs}
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FeatureSites:
    """The teacher to run, and the modules of both models whose outputs the feature loss compares."""

    def __init__(self, teacher: nn.Module, names: list[str], student: dict[str, nn.Module], ref: dict[str, nn.Module]):
        self.teacher = teacher  # a copy of the teacher (traced where it had functional convs)
        self.names = names  # the converted layers matched in the teacher
        self.student = student  # per name, the replacement in the student
        self.ref = ref  # per name, the teacher's conv


def feature_sites(result: Conversion, student: nn.Module, teacher: nn.Module, example: Batch) -> FeatureSites:
    """The feature sites of every converted layer of `result` that has a conv in `teacher`.

    Args:
        result: the conversion; its report names the converted layers, `replaced` their replacements.
        student: the model being trained (a copy of `result.model`).
        teacher: the original model (not changed: the sites are in a copy).
        example: one batch of inputs, to trace a teacher with functional convs.
    """
    names = [row.name for row in result.report.layers if row.status == "converted"]
    missing = [name for name in names if _conv_at(teacher, name) is None]
    more: dict[str, nn.Module] = {}
    if missing:  # a copy of the teacher in which those calls are conv modules
        teacher, more = _functional_convs_as_modules(teacher, missing, example)
    else:
        teacher = copy.deepcopy(teacher)
    found = {name: _conv_at(teacher, name) for name in names} | more
    matched = [name for name in names if found.get(name) is not None]
    students = {name: student.get_submodule(result.replaced.get(name, name)) for name in matched}
    return FeatureSites(teacher, matched, students, {name: found[name] for name in matched})


def _conv_at(model: nn.Module, name: str) -> nn.Module | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module if isinstance(module, ConvModule) else None


def _functional_convs_as_modules(
    teacher: nn.Module, names: list[str], example: Batch
) -> tuple[nn.Module, dict[str, nn.Module]]:
    parameter = next(iter(teacher.parameters()), None)
    example = to_device(example, parameter.device) if parameter is not None else example
    return functional_as_modules(analyze(teacher, example), set(names))
