"""The conversion pipeline: trace -> find -> plan -> factorize -> rewrite -> verify -> report."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convert.config import ConvertConfig
from convert.errors import ConvertError
from convert.factorize import block_diagonal, low_rank
from convert.find import ConvLayer, find_convs
from convert.plan import LayerPlan, plan_layers
from convert.report import LayerReport, Report, Totals
from convert.rewrite import apply, build_replacement
from convert.trace import trace
from convert.verify import output_rel_error, run_model

Progress = Callable[[str, float], None]  # (stage name, fraction of the whole job done)


@dataclasses.dataclass
class ConversionResult:
    """The converted model and the record of what changed."""

    model: nn.Module
    report: Report


def convert_model(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    config: ConvertConfig | None = None,
    *,
    exported: torch.export.ExportedProgram | None = None,
    progress: Progress | None = None,
) -> ConversionResult:
    """Rewrite the standard convolutions of `model` into depthwise-separable or grouped ones.

    The model is not changed: the result is a new module (an fx.GraphModule when a graph was traced,
    else a copy of the model with its conv modules swapped) in the same train/eval mode, dtype and device.

    Args:
        model: any nn.Module.
        example_inputs: one tensor or a sequence of positional input tensors the model accepts.
        config: target, rank and filters; defaults to rank-1 depthwise-separable.
        exported: the ExportedProgram the model came from, if any (its graph is rewritten directly).
        progress: called with (stage, fraction done) as the stages finish.

    Returns:
        ConversionResult with the converted model and its Report.

    Raises:
        ConvertError: when the model rejects the example inputs, or an option fits no layer.

    Example:
        >>> import torch, torchvision
        >>> from convert import ConvertConfig, convert_model
        >>> net = torchvision.models.resnet18().eval()
        >>> result = convert_model(net, torch.randn(1, 3, 224, 224), ConvertConfig(rank="full"))
        >>> result.report.output_rel_error < 1e-4
        True
    """
    config = config or ConvertConfig()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    notify = progress or (lambda _stage, _fraction: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def stage_done(name: str, fraction: float) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now
        notify(name, fraction)

    try:
        reference = run_model(model, inputs)
    except Exception as e:  # noqa: BLE001 - the model's own error, reported as bad input
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise ConvertError(f"the model rejects inputs of shape {shapes} ({_one_line(e)}): pass --input-shape "
                           "with the shapes it expects") from e
    work = exported.module() if exported is not None else copy.deepcopy(model)
    traced = trace(work, inputs, reference, exported)
    stage_done("trace", 0.2)
    layers = find_convs(traced)
    plans = plan_layers(layers, config)
    stage_done("plan", 0.3)
    rows = []
    for index, layer in enumerate(layers):
        plan = plans.get(layer.name)
        rows.append(_convert_layer(traced.module, layer, plan) if plan else _skipped_row(layer))
        notify("factorize", 0.3 + 0.5 * (index + 1) / len(layers))
    stage_done("factorize", 0.8)
    converted = traced.module
    output = run_model(converted, inputs)
    error = output_rel_error(reference, output)
    stage_done("verify", 0.9)
    totals = Totals(
        params_before=_count_params(model),
        params_after=_count_params(converted),
        macs_before=_count_macs(model, inputs),
        macs_after=_count_macs(converted, inputs),
        converted=sum(row.status == "converted" for row in rows),
        skipped=sum(row.status == "skipped" for row in rows),
    )
    report = Report(
        target=config.target,
        trace=traced.path,
        trace_notes=traced.notes,
        options=dataclasses.asdict(config),
        input_shapes=[list(t.shape) for t in inputs],
        input_dtype=str(inputs[0].dtype).removeprefix("torch.") if inputs else "",
        layers=rows,
        totals=totals,
        output_rel_error=error,
        seconds=seconds,
        versions={"torch": torch.__version__},
    )
    stage_done("report", 1.0)
    return ConversionResult(converted, report)


def _convert_layer(root: nn.Module, layer: ConvLayer, plan: LayerPlan) -> LayerReport:
    spec, weight = layer.spec, layer.weight
    factors = (
        low_rank(weight, plan.groups, plan.rank) if plan.pointwise else block_diagonal(weight, plan.groups)
    )
    training = root.get_submodule(layer.module).training if layer.module else root.training
    replacement = build_replacement(spec, factors, layer.bias, training)
    apply(root, layer, replacement)
    row = _skipped_row(layer)
    positions = _positions(layer)
    per_position = (
        plan.rank * spec.in_channels * math.prod(spec.kernel) + plan.groups * plan.rank * spec.out_channels
        if plan.pointwise
        else spec.out_channels * (spec.in_channels // plan.groups) * math.prod(spec.kernel)
    )
    return dataclasses.replace(
        row,
        status="converted",
        reason=plan.note,
        rank=plan.rank,
        full_rank=plan.full_rank or None,
        groups=plan.groups,
        params_after=sum(p.numel() for p in replacement.parameters()),
        macs_after=per_position * positions,
        weight_rel_error=factors.rel_error,
    )


def _skipped_row(layer: ConvLayer) -> LayerReport:
    spec = layer.spec
    params = 0 if layer.weight is None else layer.weight.numel() + (0 if layer.bias is None else layer.bias.numel())
    macs = 0
    if spec is not None:
        macs = spec.out_channels * (spec.in_channels // spec.groups) * math.prod(spec.kernel) * _positions(layer)
    return LayerReport(
        name=layer.name,
        op=layer.op,
        status="skipped",
        reason=layer.skip,
        in_channels=spec and spec.in_channels,
        out_channels=spec and spec.out_channels,
        kernel=spec and list(spec.kernel),
        stride=spec and list(spec.stride),
        dilation=spec and list(spec.dilation),
        calls=len(layer.out_shapes),
        rank=None,
        full_rank=None,
        groups=spec and spec.groups,
        params_before=params,
        params_after=params,
        macs_before=macs,
        macs_after=macs,
        weight_rel_error=None,
    )


def _positions(layer: ConvLayer) -> int:
    """Output positions (batch x spatial) summed over the call sites."""
    return sum(shape[0] * math.prod(shape[2:]) for shape in layer.out_shapes if shape)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run_model(model, inputs)
    return counter.get_total_flops() // 2


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
