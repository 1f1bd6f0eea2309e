"""The conversion pipeline: trace -> find -> plan -> factorize -> rewrite -> verify -> report."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convert.common import Progress, as_inputs
from convert.conversion import Conversion
from convert.errors import ConvertError, one_line
from convert.report.schema import LayerReport, Report, Totals
from convert.surgery.config import ConvertConfig
from convert.surgery.factorize import block_diagonal, low_rank, singular_values, truncation_error
from convert.surgery.find import ConvLayer, find_convs
from convert.surgery.plan import LayerPlan, conv_cost, plan_layers, standard_weight
from convert.surgery.rewrite import apply, build_replacement, set_submodule
from convert.surgery.trace import trace
from convert.surgery.verify import output_rel_error, run_model

ConversionResult = Conversion  # the name of the first releases


def convert_model(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    config: ConvertConfig | None = None,
    *,
    exported: torch.export.ExportedProgram | None = None,
    plans: Mapping[str, LayerPlan | str] | None = None,
    progress: Progress | None = None,
) -> Conversion:
    """Rewrite the standard convolutions of `model` into depthwise-separable or grouped ones.

    The model is not changed: the result is a new module (an fx.GraphModule when a graph was traced,
    else a copy of the model with its conv modules swapped) in the same train/eval mode, dtype and device.

    Args:
        model: any nn.Module.
        example_inputs: one tensor or a sequence of positional input tensors the model accepts.
        config: target, rank and filters; defaults to rank-1 depthwise-separable.
        exported: the ExportedProgram the model came from, if any (its graph is rewritten directly).
        plans: per layer name, its plan or why it is kept (from `convert.auto.planner.plan_for_speed`); required by
            target "auto", and used instead of planning from `config` when given.
        progress: called with (stage, fraction done) as the stages finish.

    Returns:
        The Conversion: the original, the inputs, the converted model and its Report.

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
    inputs = as_inputs(example_inputs)
    notify = progress or (lambda _stage, _fraction: None)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def stage_done(name: str, fraction: float) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 4)
        clock = now
        notify(name, fraction)

    reference = _reference_output(model, inputs)
    work = model if exported is not None else copy.deepcopy(model)  # an exported graph is copied by trace
    traced = trace(work, inputs, reference, exported)
    params_before = _count_params(traced.module)  # a graph keeps only the modules the example input reaches
    if params_before < _count_params(model):
        traced.notes.append(
            f"{traced.path}: {_count_params(model) - params_before} parameters of modules the example input does "
            "not reach are not in the converted model (nor in the totals)"
        )
    stage_done("trace", 0.2)
    layers = find_convs(traced)
    if plans is not None:
        plans = _given_plans(layers, plans)
    elif config.target == "auto":
        raise ConvertError("target 'auto' needs per-layer plans: get them from convert.auto.planner.plan_for_speed")
    else:
        plans = plan_layers(layers, config)
    stage_done("plan", 0.3)
    rows, swaps, replaced = [], {}, {}
    for index, layer in enumerate(layers):
        plan = plans.get(layer.name)
        if plan is None:
            rows.append(_layer_row(layer, None, None))
        else:
            original = traced.module.get_submodule(layer.module) if layer.module else None
            row, replacement, replaced[layer.name] = _convert_layer(traced.module, layer, plan)
            rows.append(row)
            if original is not None:
                swaps[index] = (original, replacement)
        notify("factorize", 0.3 + 0.5 * (index + 1) / len(layers))
    stage_done("factorize", 0.8)
    converted = traced.module
    try:
        output = run_model(converted, inputs)
    except Exception:
        if traced.path not in ("module-walk", "fx-leaves"):  # only swaps made without seeing a graph can break
            raise
        _keep_swaps_that_run(converted, layers, rows, swaps, inputs)
        output = run_model(converted, inputs)
    error = output_rel_error(reference, output)
    stage_done("verify", 0.9)
    totals = Totals(
        params_before=params_before,
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
    kept = {row.name for row in rows if row.status == "converted"}  # the module walk may have undone swaps
    replaced = {name: path for name, path in replaced.items() if name in kept}
    return Conversion(model, inputs, converted, report, replaced)


def _given_plans(layers: list[ConvLayer], given: Mapping[str, LayerPlan | str]) -> dict[str, LayerPlan]:
    """The plans of the candidates that `given` converts; the others get its reason (or "not in the plan")."""
    plans = {}
    for layer in layers:
        if layer.skip is None:
            choice = given.get(layer.name, "not in the plan")
            if isinstance(choice, LayerPlan):
                plans[layer.name] = choice
            else:
                layer.skip = choice
    return plans


def _convert_layer(root: nn.Module, layer: ConvLayer, plan: LayerPlan) -> tuple[LayerReport, nn.Module, str]:
    weight, outer = standard_weight(layer), layer.spec.groups
    if plan.pointwise:
        factors = low_rank(weight, plan.groups, plan.rank, outer)
    else:
        factors = block_diagonal(weight, plan.groups, outer)
    training = root.get_submodule(layer.module).training if layer.module else root.training
    replacement = build_replacement(layer.spec, factors, layer.bias, training, layer.weight.requires_grad)
    path = apply(root, layer, replacement)
    return _layer_row(layer, plan, factors.rel_error), replacement, path


def _keep_swaps_that_run(
    root: nn.Module,
    layers: list[ConvLayer],
    rows: list[LayerReport],
    swaps: dict[int, tuple[nn.Module, nn.Module]],
    inputs: tuple[torch.Tensor, ...],
) -> None:
    """Module walk (or inside modules an fx graph calls whole): the model no longer runs, so some code reads a
    swapped conv's attributes (e.g. `self.conv.weight`) outside its call. Without a graph to tell which, put
    the originals back and keep each swap only if the model still runs with it."""
    for index, (original, _) in swaps.items():
        set_submodule(root, layers[index].module, original)
    for index, (original, replacement) in swaps.items():
        set_submodule(root, layers[index].module, replacement)
        try:
            run_model(root, inputs)
        except Exception:  # noqa: BLE001 - this swap breaks the model: undo it
            set_submodule(root, layers[index].module, original)
            layers[index].skip = "its attributes (e.g. .weight) are read outside the conv call"
            rows[index] = _layer_row(layers[index], None, None)


def inspect_model(
    model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor, configs: Sequence[ConvertConfig]
) -> list[list[LayerReport]]:
    """What each config would do to each conv, without converting: one list of rows per config.

    Rows have status "converted" for layers the config would convert, with the parameters, MACs and
    weight error the conversion would give (the error from singular values alone).
    """
    inputs = as_inputs(example_inputs)
    traced = trace(copy.deepcopy(model), inputs, _reference_output(model, inputs))
    found = find_convs(traced)
    views = []
    for config in configs:
        layers = [dataclasses.replace(layer) for layer in found]  # planning sets `skip` per config
        plans = plan_layers(layers, config)
        views.append(
            [
                _layer_row(layer, plans.get(layer.name), _predicted_error(layer, plans.get(layer.name)))
                for layer in layers
            ]
        )
    return views


def _predicted_error(layer: ConvLayer, plan: LayerPlan | None) -> float | None:
    if plan is None:
        return None
    weight, outer = standard_weight(layer), layer.spec.groups
    if not plan.pointwise:
        return block_diagonal(weight, plan.groups, outer).rel_error
    return truncation_error(singular_values(weight, plan.groups, outer), plan.rank)


def _reference_output(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    try:
        return run_model(model, inputs)
    except Exception as e:  # noqa: BLE001 - the model's own error, reported as bad input
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise ConvertError(
            f"the model rejects inputs of shape {shapes} ({one_line(e)}): pass --input-shape with the shapes it expects"
        ) from e


def _layer_row(layer: ConvLayer, plan: LayerPlan | None, rel_error: float | None) -> LayerReport:
    """The report row of a layer as it is (`plan` None) or as converted by `plan`."""
    spec = layer.spec
    params_before = macs_before = params_after = macs_after = 0
    if spec is not None:
        bias = layer.bias is not None
        positions = _positions(layer.in_shapes), _positions(layer.out_shapes)
        params_before, macs_before = conv_cost(spec, None, bias, *positions)
        params_after, macs_after = conv_cost(spec, plan, bias, *positions)
    return LayerReport(
        name=layer.name,
        op=layer.op,
        status="skipped" if plan is None else "converted",
        reason=layer.skip if plan is None else plan.note,
        in_channels=spec and spec.in_channels,
        out_channels=spec and spec.out_channels,
        kernel=spec and list(spec.kernel),
        stride=spec and list(spec.stride),
        dilation=spec and list(spec.dilation),
        output_shape=list(layer.out_shapes[0]) if layer.out_shapes else None,
        receptive_field=list(layer.receptive_field) if layer.receptive_field else None,
        calls=len(layer.out_shapes),
        rank=plan and plan.rank,
        full_rank=(plan and plan.full_rank) or None,
        groups=plan.groups if plan else spec and spec.groups,
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        weight_rel_error=rel_error,
    )


def _positions(shapes: list[tuple[int, ...]]) -> int:
    """Positions (batch x spatial) summed over the call sites."""
    return sum(shape[0] * math.prod(shape[2:]) for shape in shapes if shape)


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run_model(model, inputs)
    return counter.get_total_flops() // 2
