"""Planners: decide, per candidate conv, whether to convert it and with which groups and rank (decisions only:
nothing is changed here). `UniformPlanner` applies one `ConvertConfig` to every layer; `convert.auto` has the
latency-aware one."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import torch

from convert.common import Progress, no_progress
from convert.errors import ConvertError
from convert.report.schema import AutoReport
from convert.surgery.config import DEFAULT_SEPARABLE_RANK, ConvertConfig
from convert.surgery.factorize import (
    Factors,
    block_diagonal,
    full_rank,
    low_rank,
    rank_for_energy,
    singular_values,
    standard_layout,
)
from convert.surgery.find import ConvLayer, ConvSpec

if TYPE_CHECKING:
    from convert.surgery.analysis import Analysis

__all__ = [
    "check_name_filters",
    "conv_cost",
    "Decision",
    "GivenPlanner",
    "LayerPlan",
    "Plan",
    "plan_layer",
    "plan_layers",
    "Planner",
    "standard_weight",
    "svd_factors",
    "UniformPlanner",
]


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How one conv is rewritten."""

    groups: int  # groups of the first (grouped or depthwise) conv
    rank: int  # filters per group in the first conv (its output channels are groups * rank)
    pointwise: bool  # a 1x1 conv follows; False: the plain grouped conv with W's block diagonal
    full_rank: int  # the rank at which the form is exact (0 for the plain grouped conv, never exact)
    note: str | None = None  # e.g. that the requested rank was clamped


Decision = LayerPlan | str  # how a candidate conv is rewritten, or why it is left as it is


@dataclasses.dataclass(frozen=True)
class Plan:
    """A planner's decisions: one per candidate layer (found convertible by `find`)."""

    decisions: dict[str, Decision]  # layer name -> its plan, or why it stays
    auto: AutoReport | None = None  # what a latency-aware planner measured, for the report


class Planner(Protocol):
    """Chooses, per candidate conv of an analysed model, its form or why it stays; changes nothing.

    `share` is the part of a conversion's time the planner takes, for progress bars.
    """

    share: float

    def plan(self, analysis: Analysis, progress: Progress) -> Plan: ...


@dataclasses.dataclass(frozen=True)
class UniformPlanner:
    """The same target, groups and rank rule for every layer (`ConvertConfig`)."""

    config: ConvertConfig
    share: float = 0.1

    def plan(self, analysis: Analysis, progress: Progress = no_progress) -> Plan:
        return Plan(plan_layers(analysis.candidates(), self.config))


@dataclasses.dataclass(frozen=True)
class GivenPlanner:
    """Decisions made elsewhere (e.g. an earlier `plan_for_speed`); layers it does not name stay."""

    decisions: Mapping[str, Decision]
    share: float = 0.05

    def plan(self, analysis: Analysis, progress: Progress = no_progress) -> Plan:
        return Plan({layer.name: self.decisions.get(layer.name, "not in the plan") for layer in analysis.candidates()})


def plan_layers(candidates: list[ConvLayer], config: ConvertConfig) -> dict[str, Decision]:
    """A decision for every candidate layer: its plan, or why `config` leaves it.

    Raises:
        ConvertError: when `config.groups` fits none of the layers it could apply to.
    """
    decisions = {layer.name: plan_layer(layer, config) for layer in candidates}
    misfits = [layer for layer in candidates if str(decisions[layer.name]).startswith("groups=")]
    if misfits and not any(isinstance(d, LayerPlan) for d in decisions.values()):
        channels = sorted({layer.spec.in_channels for layer in misfits if layer.spec})
        raise ConvertError(
            f"`groups`={config.groups} fits no layer (input channels: {', '.join(map(str, channels))}): "
            "choose a number of groups that divides them"
        )
    return decisions


_NAMES_SHOWN = 8  # layer names a message lists before "..."


def check_name_filters(layers: list[ConvLayer], config: ConvertConfig) -> None:
    """Refuse an `include` or `exclude` that matches none of the model's convs: a typo would convert all or none
    of them silently.

    Raises:
        ConvertError: naming the filter and the layers there are.
    """
    names = [layer.name for layer in layers]
    for option in ("include", "exclude"):
        pattern = getattr(config, option)
        if pattern is None or any(re.search(pattern, name) for name in names):
            continue
        shown = ", ".join(names[:_NAMES_SHOWN]) + (", ..." if len(names) > _NAMES_SHOWN else "")
        there = f"the {len(names)} convs are {shown}" if names else "the model has no convs"
        raise ConvertError(
            f"`{option}` {pattern!r} matches no layer ({there}): use a regex that re.search finds in "
            "some of these names"
        )


def plan_layer(layer: ConvLayer, config: ConvertConfig) -> LayerPlan | str:
    """The plan for one candidate conv, or the reason it is left as it is."""
    spec = layer.spec
    assert spec is not None and layer.weight is not None  # candidates always have them
    if config.include and not re.search(config.include, layer.name):
        return f"name does not match --include {config.include!r}"
    if config.exclude and re.search(config.exclude, layer.name):
        return f"name matches --exclude {config.exclude!r}"
    if min(spec.in_channels, spec.out_channels) < config.min_channels:
        return f"fewer than --min-channels {config.min_channels} channels"
    if spec.transposed and config.transposed == "skip":
        return "transposed conv: --transposed separable converts it"
    if spec.groups > 1 and not config.include_grouped:
        return f"already grouped (groups={spec.groups}): --include-grouped factorizes each group"
    if config.target == "separable" or spec.transposed:
        if math.prod(spec.kernel) == 1:
            return "1x1 conv is already pointwise (--to grouped can convert it)"
        groups = spec.in_channels
    else:
        groups = config.groups
        assert groups is not None  # ConvertConfig requires it for "grouped"
        if spec.in_channels % groups:
            return f"groups={groups} does not divide the {spec.in_channels} input channels"
        if groups % spec.groups:
            return f"groups={groups} is not a multiple of the conv's own groups={spec.groups}"
        if not config.pointwise:
            if spec.out_channels % groups:
                return f"groups={groups} does not divide the {spec.out_channels} output channels"
            return LayerPlan(groups=groups, rank=spec.out_channels // groups, pointwise=False, full_rank=0)
    return _choose_rank(layer, spec, groups, config)


def _choose_rank(layer: ConvLayer, spec: ConvSpec, groups: int, config: ConvertConfig) -> LayerPlan:
    exact = full_rank(spec.out_channels, spec.in_channels, math.prod(spec.kernel), groups, spec.groups)
    if config.energy is not None:
        rank = rank_for_energy(singular_values(standard_weight(layer), groups, spec.groups), config.energy)
        return LayerPlan(groups, rank, True, exact, f"energy {config.energy:g} -> rank {rank}")
    if config.rank == "full":
        return LayerPlan(groups, exact, True, exact)
    if config.rank is not None:
        wanted = config.rank
    elif config.target == "separable" or spec.transposed:
        wanted = DEFAULT_SEPARABLE_RANK
    else:
        wanted = max(1, spec.out_channels // groups)  # keeps C_out channels, as the plain grouped form does
    if wanted > exact:
        return LayerPlan(groups, exact, True, exact, f"rank {wanted} clamped to full rank {exact}")
    return LayerPlan(groups, wanted, True, exact)


def standard_weight(layer: ConvLayer) -> torch.Tensor:
    """The layer's weight in the standard layout (C_out, C_in/groups, *k), transposed convs included."""
    assert layer.spec is not None and layer.weight is not None
    return standard_layout(layer.weight, layer.spec.transposed, layer.spec.groups)


def svd_factors(layer: ConvLayer, plan: LayerPlan) -> Factors:
    """The factors of `layer` under `plan` from its weight alone: truncated SVD per group, or the block diagonal."""
    weight, outer = standard_weight(layer), layer.spec.groups
    if plan.pointwise:
        return low_rank(weight, plan.groups, plan.rank, outer)
    return block_diagonal(weight, plan.groups, outer)


def conv_cost(
    spec: ConvSpec, plan: LayerPlan | None, bias: bool, in_positions: int, out_positions: int
) -> tuple[int, int]:
    """(parameters, MACs) of the conv as it is (`plan` None) or as planned, over the positions given.

    Positions are batch x spatial size summed over the call sites, of the input and of the output. A conv
    costs its weight's size per output position; a transposed conv per input position (each input value
    is spread over the output). The factorized form: first conv r*C_in*K per output position (transposed:
    per input position), then the 1x1 conv G*r*C_out/g0 per output position, g0 the conv's own groups.
    The plain grouped form: C_out*(C_in/G)*K per output position. The bias adds C_out parameters, no MACs.
    """
    k = math.prod(spec.kernel)
    first_positions = in_positions if spec.transposed else out_positions
    if plan is None:
        params = spec.out_channels * (spec.in_channels // spec.groups) * k
        macs = params * first_positions
    elif plan.pointwise:
        first, pointwise = plan.rank * spec.in_channels * k, plan.groups * plan.rank * spec.out_channels // spec.groups
        params, macs = first + pointwise, first * first_positions + pointwise * out_positions
    else:
        params = spec.out_channels * (spec.in_channels // plan.groups) * k
        macs = params * out_positions
    return params + (spec.out_channels if bias else 0), macs
