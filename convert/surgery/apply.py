"""The plan of a conversion as data (plan.json), and `apply_plan`: the converted architecture rebuilt on a freshly
built original, to load the converted weights into (model.safetensors) without unpickling anything.

    model = apply_plan(timm.create_model("resnet50"), "plan.json")
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))

This is how timm and Hugging Face models are loaded: code builds the architecture, a file holds only tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from convert.surgery.analysis import Analysis

from convert.common import Progress, no_progress
from convert.errors import ConvertError, one_line
from convert.surgery.factorize import Factors
from convert.surgery.find import ConvLayer, ConvSpec, module_layer
from convert.surgery.ops import ConvModule
from convert.surgery.plan import LayerPlan, Plan
from convert.surgery.rewrite import build_replacement, rewrite_calls, swap_module

__all__ = ["PLAN_FORMAT", "AppliedLayer", "SavedPlanner", "apply_plan", "plan_document", "read_plan"]

PLAN_FORMAT = "convert.plan"
PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class AppliedLayer:
    """One converted conv: where it is, what it was, and its form."""

    name: str  # as in the report
    module_path: str | None  # the conv module that was swapped; None for functional calls
    owner: str  # functional calls: the module whose forward makes them ("" the model)
    weight_path: str | None  # functional calls: the weight they read
    bias: bool  # whether the conv adds a bias
    spec: ConvSpec
    plan: LayerPlan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module_path,
            "owner": self.owner,
            "weight": self.weight_path,
            "bias": self.bias,
            "groups": self.plan.groups,
            "rank": self.plan.rank,
            "pointwise": self.plan.pointwise,
            "full_rank": self.plan.full_rank,
            "conv": dataclasses.asdict(self.spec),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AppliedLayer:
        conv = dict(data["conv"])
        tuples = ("kernel", "stride", "dilation", "output_padding") + (
            () if isinstance(conv["padding"], str) else ("padding",)
        )
        spec = ConvSpec(**{**conv, **{key: tuple(conv[key]) for key in tuples}})
        plan = LayerPlan(data["groups"], data["rank"], data["pointwise"], data["full_rank"])
        return cls(data["name"], data["module"], data["owner"], data["weight"], data["bias"], spec, plan)

    @classmethod
    def of(cls, layer: ConvLayer, plan: LayerPlan) -> AppliedLayer:
        plan = dataclasses.replace(plan, note=None)
        return cls(
            layer.name, layer.module_path, layer.owner, layer.weight_path, layer.bias is not None, layer.spec, plan
        )


def plan_document(layers: list[AppliedLayer], versions: Mapping[str, str]) -> dict[str, Any]:
    """What plan.json holds: the format, the versions that wrote it, and every converted layer."""
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "versions": dict(versions),
        "layers": [layer.to_dict() for layer in layers],
    }


def read_plan(plan: Mapping[str, Any] | str | os.PathLike[str]) -> list[AppliedLayer]:
    """The layers of a plan (a plan.json path, or the document itself).

    Raises:
        ConvertError: when it is not a readable plan of this format.
    """
    if not isinstance(plan, Mapping):
        try:
            plan = json.loads(Path(plan).read_text())
        except (OSError, ValueError) as e:
            raise ConvertError(
                f"cannot read the plan {plan} ({one_line(e)}): give the plan.json a conversion wrote"
            ) from e
    if not isinstance(plan, Mapping) or plan.get("format") != PLAN_FORMAT:
        raise ConvertError(
            "this is not a conversion plan (no format 'convert.plan'): give the plan.json a conversion wrote"
        )
    if plan.get("version") != PLAN_VERSION:
        raise ConvertError(
            f"plan version {plan.get('version')} is not supported: convert the model again with this version"
        )
    try:
        return [AppliedLayer.from_dict(layer) for layer in plan["layers"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ConvertError(f"the plan is damaged ({one_line(e)}): give the plan.json a conversion wrote") from e


@dataclasses.dataclass(frozen=True)
class SavedPlanner:
    """The `Planner` that applies a plan.json to a model's own weights: the same forms at the same layers (e.g. a
    plan chosen by `--to auto` on another machine, applied to retrained weights)."""

    source: Mapping[str, Any] | str | os.PathLike[str]  # a plan.json path, or the document
    share: float = 0.05

    def plan_layers(self, analysis: Analysis) -> dict[str, LayerPlan | str]:
        """Per candidate, its planned form or "not in the plan".

        Raises:
            ConvertError: when a planned layer is not a candidate of this model, or has other shapes.
        """
        candidates = {layer.name: layer for layer in analysis.candidates()}
        decisions: dict[str, LayerPlan | str] = dict.fromkeys(candidates, "not in the plan")
        for applied in read_plan(self.source):
            found = candidates.get(applied.name)
            if found is None or found.spec != applied.spec:
                what = "no convertible conv" if found is None else _describe(found.spec)
                raise ConvertError(
                    f"the plan does not fit the model: its layer {applied.name} is {what} here, the plan converts "
                    f"{_describe(applied.spec)}: give the model the plan was made for"
                )
            decisions[applied.name] = applied.plan
        return decisions

    def plan(self, analysis: Analysis, progress: Progress = no_progress) -> Plan:
        return Plan(self.plan_layers(analysis))


def apply_plan(model: nn.Module, plan: Mapping[str, Any] | str | os.PathLike[str]) -> nn.Module:
    """Rebuild the converted architecture on `model`, a freshly built original, in place: each planned conv is
    replaced by its factorized form (zero weights: load the converted state dict next).

    Returns:
        The model: `model` itself, unless its own forward calls convs as functions (then the graph module that
        the conversion made of it, as the conversion did).

    Raises:
        ConvertError: when the plan does not fit the model (a layer missing, or of other shapes).
    """
    layers = read_plan(plan)
    functional: dict[str, list[tuple[ConvLayer, nn.Module]]] = {}
    for layer in layers:
        path = layer.module_path or layer.owner
        module = _get(model, path, layer.name)
        if layer.module_path is not None:
            _check_fits(layer, module)
        weight = module.weight if layer.module_path is not None else _get_tensor(model, layer)
        bias = torch.zeros(layer.spec.out_channels, dtype=weight.dtype, device=weight.device) if layer.bias else None
        factors = _zeros(layer, weight)
        replacement = build_replacement(layer.spec, factors, bias, module.training, weight.requires_grad)
        if layer.module_path is not None:
            swap_module(model, layer.module_path, replacement)
        else:
            found = ConvLayer(layer.name, "function", spec=layer.spec, weight_path=layer.weight_path, owner=layer.owner)
            functional.setdefault(layer.owner, []).append((found, replacement))
    for owner, calls in sorted(functional.items(), key=lambda item: -item[0].count(".") - bool(item[0])):
        try:
            model, _ = rewrite_calls(model, owner, calls)
        except Exception as e:  # the calls are not where the plan says: another model
            raise ConvertError(
                f"the plan does not fit the model: {owner or 'its forward'} does not make the planned conv calls "
                f"({one_line(e)}): build the model the plan was made for"
            ) from e
    return model


def _get(model: nn.Module, path: str, name: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ConvertError(
            f"the plan does not fit the model: it has no module {path!r} (layer {name}): build the model the plan "
            "was made for (same factory and arguments)"
        ) from None


def _check_fits(layer: AppliedLayer, module: nn.Module) -> None:
    found = module_layer(layer.module_path, module) if isinstance(module, ConvModule) else None
    if found is None or found.spec != layer.spec:
        what = type(module).__name__ if found is None else _describe(found.spec)
        raise ConvertError(
            f"the plan does not fit the model: {layer.module_path} is {what}, the plan converts "
            f"{_describe(layer.spec)}: build the model the plan was made for (same factory and arguments)"
        )


def _describe(spec: ConvSpec) -> str:
    kernel = "x".join(map(str, spec.kernel))
    return f"a {kernel} conv {spec.in_channels}->{spec.out_channels} (groups {spec.groups})"


def _get_tensor(model: nn.Module, layer: AppliedLayer) -> torch.Tensor:
    owner, _, name = (layer.weight_path or "").rpartition(".")
    tensor = getattr(_get(model, owner, layer.name), name, None)
    if not isinstance(tensor, torch.Tensor):
        raise ConvertError(
            f"the plan does not fit the model: it has no weight {layer.weight_path!r} (layer {layer.name}): build "
            "the model the plan was made for (same factory and arguments)"
        )
    return tensor


def _zeros(layer: AppliedLayer, like: torch.Tensor) -> Factors:
    """Factors of the planned shapes, all zero, in the dtype and device of `like` (the original weight)."""
    spec, plan, options = layer.spec, layer.plan, dict(dtype=like.dtype, device=like.device)
    if not plan.pointwise:
        return Factors(
            torch.zeros(spec.out_channels, spec.in_channels // plan.groups, *spec.kernel, **options), None, 0.0
        )
    width = plan.groups * plan.rank
    first = torch.zeros(width, spec.in_channels // plan.groups, *spec.kernel, **options)
    pointwise = torch.zeros(spec.out_channels, width // spec.groups, *([1] * len(spec.kernel)), **options)
    return Factors(first, pointwise, 0.0)
