"""Decide, per standard conv, whether to convert it and with which groups and rank."""

from __future__ import annotations

import dataclasses
import math
import re

from convert.config import DEFAULT_SEPARABLE_RANK, ConvertConfig
from convert.errors import ConvertError
from convert.factorize import full_rank, rank_for_energy, singular_values
from convert.find import ConvLayer, ConvSpec


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """How one conv is rewritten."""

    groups: int  # groups of the first (grouped or depthwise) conv
    rank: int  # filters per group in the first conv (its output channels are groups * rank)
    pointwise: bool  # a 1x1 conv follows; False: the plain grouped conv with W's block diagonal
    full_rank: int  # the rank at which the form is exact (0 for the plain grouped conv, never exact)
    note: str | None = None  # e.g. that the requested rank was clamped


def plan_layers(layers: list[ConvLayer], config: ConvertConfig) -> dict[str, LayerPlan]:
    """A plan for every layer that will be converted; sets `skip` on the candidates that will not.

    Raises:
        ConvertError: when `config.groups` fits none of the layers it could apply to.
    """
    plans: dict[str, LayerPlan] = {}
    candidates = [layer for layer in layers if layer.skip is None]
    for layer in candidates:
        result = plan_layer(layer, config)
        if isinstance(result, str):
            layer.skip = result
        else:
            plans[layer.name] = result
    misfits = [layer for layer in candidates if (layer.skip or "").startswith("groups=")]
    if misfits and not plans:
        channels = sorted({layer.spec.in_channels for layer in misfits if layer.spec})
        raise ConvertError(
            f"--groups {config.groups} fits no layer (input channels: {', '.join(map(str, channels))}): "
            "choose a number of groups that divides them"
        )
    return plans


def plan_layer(layer: ConvLayer, config: ConvertConfig) -> LayerPlan | str:
    """The plan for one standard conv, or the reason it is left as it is."""
    spec = layer.spec
    assert spec is not None and layer.weight is not None  # candidates always have them
    if config.include and not re.search(config.include, layer.name):
        return f"name does not match --include {config.include!r}"
    if config.exclude and re.search(config.exclude, layer.name):
        return f"name matches --exclude {config.exclude!r}"
    if min(spec.in_channels, spec.out_channels) < config.min_channels:
        return f"fewer than --min-channels {config.min_channels} channels"
    if config.target == "separable":
        if math.prod(spec.kernel) == 1:
            return "1x1 conv is already pointwise (--to grouped can convert it)"
        groups = spec.in_channels
    else:
        groups = config.groups
        assert groups is not None  # ConvertConfig requires it for "grouped"
        if spec.in_channels % groups:
            return f"groups={groups} does not divide the {spec.in_channels} input channels"
        if not config.pointwise:
            if spec.out_channels % groups:
                return f"groups={groups} does not divide the {spec.out_channels} output channels"
            return LayerPlan(groups=groups, rank=spec.out_channels // groups, pointwise=False, full_rank=0)
    return _choose_rank(layer, spec, groups, config)


def _choose_rank(layer: ConvLayer, spec: ConvSpec, groups: int, config: ConvertConfig) -> LayerPlan:
    exact = full_rank(spec.out_channels, spec.in_channels, math.prod(spec.kernel), groups)
    if config.energy is not None:
        rank = rank_for_energy(singular_values(layer.weight, groups), config.energy)
        return LayerPlan(groups, rank, True, exact, f"energy {config.energy:g} -> rank {rank}")
    if config.rank == "full":
        return LayerPlan(groups, exact, True, exact)
    if config.rank is not None:
        wanted = config.rank
    elif config.target == "separable":
        wanted = DEFAULT_SEPARABLE_RANK
    else:
        wanted = max(1, spec.out_channels // groups)  # keeps C_out channels, as the plain grouped form does
    if wanted > exact:
        return LayerPlan(groups, exact, True, exact, f"rank {wanted} clamped to full rank {exact}")
    return LayerPlan(groups, wanted, True, exact)


def conv_cost(spec: ConvSpec, plan: LayerPlan | None, bias: bool) -> tuple[int, int]:
    """(parameters, MACs per output position) of the conv as it is (`plan` None) or as planned.

    Per output position: standard C_out*C_in/g*K; grouped low-rank r*C_in*K + G*r*C_out (separable is
    G = C_in); plain grouped C_out*(C_in/G)*K. The bias adds C_out parameters and no MACs.
    """
    k = math.prod(spec.kernel)
    if plan is None:
        macs = spec.out_channels * (spec.in_channels // spec.groups) * k
    elif plan.pointwise:
        macs = plan.rank * spec.in_channels * k + plan.groups * plan.rank * spec.out_channels
    else:
        macs = spec.out_channels * (spec.in_channels // plan.groups) * k
    return macs + (spec.out_channels if bias else 0), macs
