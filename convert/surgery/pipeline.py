"""The conversion pipeline: trace -> find (`analyze`) -> plan (a `Planner`) -> factorize -> rewrite (`Analysis.build`)
-> verify -> report."""

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

from convert.common import Inputs, Progress, as_inputs, no_progress, span
from convert.conversion import Conversion
from convert.errors import ConvertError, one_line
from convert.report.schema import LayerReport, Report, Totals
from convert.surgery.config import ConvertConfig
from convert.surgery.factorize import block_diagonal, low_rank, singular_values, truncation_error
from convert.surgery.find import ConvLayer, find_convs
from convert.surgery.plan import Decision, GivenPlanner, LayerPlan, Planner, UniformPlanner, conv_cost, standard_weight
from convert.surgery.rewrite import apply, build_replacement, set_submodule
from convert.surgery.trace import Traced, trace
from convert.surgery.verify import output_rel_error, run_model

__all__ = ["Analysis", "analyze", "Built", "ConversionResult", "convert_model", "inspect_model"]

ConversionResult = Conversion  # the name of the first releases


@dataclasses.dataclass
class Analysis:
    """What tracing and finding learned about a model: planners decide from it, `build` rewrites from it."""

    traced: Traced
    layers: list[ConvLayer]  # every conv found, in graph order
    inputs: tuple[torch.Tensor, ...]
    reference: Any  # the model's output on `inputs`

    def candidates(self) -> list[ConvLayer]:
        """The layers a planner may convert."""
        return [layer for layer in self.layers if layer.unsupported is None]

    def build(self, decisions: Mapping[str, Decision], *, copy_module: bool = True) -> Built:
        """The traced module with the planned layers rewritten; a copy unless `copy_module` is False (then the
        analysis is spent: its module is the result).

        Raises:
            Exception: whatever the rewritten module raises on `inputs` when a swap breaks it on a path that shows
                no graph (those swaps are undone, with the reason, before that).
        """
        root = copy.deepcopy(self.traced.module) if copy_module else self.traced.module
        rows, swaps, replaced, reasons = [], {}, {}, {}
        for index, layer in enumerate(self.layers):
            plan = decisions.get(layer.name)
            if not isinstance(plan, LayerPlan):
                rows.append(_layer_row(layer, None, None, layer.unsupported or plan))
                continue
            original = root.get_submodule(layer.module_path) if layer.module_path else None
            row, replacement, replaced[layer.name] = _convert_layer(root, layer, plan)
            rows.append(row)
            if original is not None:
                swaps[index] = (original, replacement)
        try:
            output = run_model(root, self.inputs)
        except Exception:  # only swaps made without seeing a graph can break the model
            if self.traced.strategy not in ("module-walk", "fx-leaves"):
                raise
            reasons = _keep_swaps_that_run(root, self.layers, swaps, self.inputs)
            output = run_model(root, self.inputs)
        for index, reason in reasons.items():
            rows[index] = _layer_row(self.layers[index], None, None, reason)
            replaced.pop(self.layers[index].name, None)
        return Built(root, rows, replaced, output)


@dataclasses.dataclass
class Built:
    """A rewritten module and its per-layer rows."""

    module: nn.Module
    rows: list[LayerReport]
    replaced: dict[str, str]  # converted layer name -> module path of its replacement
    output: Any  # its output on the analysis' inputs


def analyze(
    model: nn.Module,
    example_inputs: Inputs,
    exported: torch.export.ExportedProgram | None = None,
) -> Analysis:
    """Trace a copy of `model` and find its convs (the model is not changed).

    Raises:
        ConvertError: when the model rejects the example inputs.
    """
    inputs = as_inputs(example_inputs)
    reference = _reference_output(model, inputs)
    work = model if exported is not None else copy.deepcopy(model)  # an exported graph is copied by trace
    traced = trace(work, inputs, reference, exported)
    return Analysis(traced, find_convs(traced), inputs, reference)


def convert_model(
    model: nn.Module,
    example_inputs: Inputs,
    config: ConvertConfig | None = None,
    *,
    planner: Planner | None = None,
    plans: Mapping[str, Decision] | None = None,
    exported: torch.export.ExportedProgram | None = None,
    progress: Progress | None = None,
) -> Conversion:
    """Rewrite the standard convolutions of `model` into depthwise-separable or grouped ones.

    The model is not changed: the result is a new module (an fx.GraphModule when a graph was traced,
    else a copy of the model with its conv modules swapped) in the same train/eval mode, dtype and device.

    Args:
        model: any nn.Module.
        example_inputs: one tensor or a sequence of positional input tensors the model accepts.
        config: target, rank and filters; defaults to rank-1 depthwise-separable.
        planner: who decides each layer's form: default `UniformPlanner(config)`, or for target "auto"
            `convert.auto.LatencyPlanner()` (which measures on ONNX Runtime).
        plans: decisions made elsewhere, per layer name (e.g. `plan_for_speed(...).plans`): the same as
            `planner=GivenPlanner(plans)`.
        exported: the ExportedProgram the model came from, if any (its graph is rewritten directly).
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
    planner = _planner(config, planner, plans)
    notify = progress or no_progress
    clock = _StageClock(notify)
    analysis = analyze(model, example_inputs, exported)
    traced, inputs = analysis.traced, analysis.inputs
    params_before = _count_params(traced.module)  # a graph keeps only the modules the example input reaches
    if params_before < _count_params(model):
        traced.notes.append(
            f"{traced.strategy}: {_count_params(model) - params_before} parameters of modules the example input does "
            "not reach are not in the converted model (nor in the totals)"
        )
    plan_start = 0.1
    clock.done("trace", plan_start)
    plan_end = plan_start + planner.share
    plan = planner.plan(analysis, span(notify, plan_start, plan_end))
    clock.done("plan", plan_end)
    built = analysis.build(plan.decisions, copy_module=False)
    clock.done("factorize", plan_end + 0.7 * (1 - plan_end))
    converted, rows = built.module, built.rows
    error = output_rel_error(analysis.reference, built.output)
    clock.done("verify", plan_end + 0.9 * (1 - plan_end))
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
        trace=traced.strategy,
        trace_notes=traced.notes,
        options=dataclasses.asdict(config),
        input_shapes=[list(t.shape) for t in inputs],
        input_dtype=str(inputs[0].dtype).removeprefix("torch.") if inputs else "",
        layers=rows,
        totals=totals,
        output_rel_error=error,
        seconds=clock.seconds,
        versions={"torch": torch.__version__},
        auto=plan.auto,
    )
    clock.done("report", 1.0)
    return Conversion(model, inputs, converted, report, built.replaced)


def _planner(config: ConvertConfig, planner: Planner | None, plans: Mapping[str, Decision] | None) -> Planner:
    if planner is not None and plans is not None:
        raise ConvertError("give either a `planner` or `plans`, not both")
    if planner is not None:
        return planner
    if plans is not None:
        return GivenPlanner(plans)
    if config.target == "auto":
        from convert.auto.planner import LatencyPlanner  # the latency planner needs ONNX Runtime: loaded on use

        return LatencyPlanner()
    return UniformPlanner(config)


class _StageClock:
    """Seconds per stage, for the report, and the progress callback as each stage finishes."""

    def __init__(self, notify: Progress) -> None:
        self.notify, self.seconds, self._start = notify, {}, time.perf_counter()

    def done(self, stage: str, fraction: float) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._start, 4)
        self._start = now
        self.notify(stage, fraction)


def _convert_layer(root: nn.Module, layer: ConvLayer, plan: LayerPlan) -> tuple[LayerReport, nn.Module, str]:
    weight, outer = standard_weight(layer), layer.spec.groups
    if plan.pointwise:
        factors = low_rank(weight, plan.groups, plan.rank, outer)
    else:
        factors = block_diagonal(weight, plan.groups, outer)
    training = root.get_submodule(layer.module_path).training if layer.module_path else root.training
    replacement = build_replacement(layer.spec, factors, layer.bias, training, layer.weight.requires_grad)
    path = apply(root, layer, replacement)
    return _layer_row(layer, plan, factors.rel_error, plan.note), replacement, path


def _keep_swaps_that_run(
    root: nn.Module,
    layers: list[ConvLayer],
    swaps: dict[int, tuple[nn.Module, nn.Module]],
    inputs: tuple[torch.Tensor, ...],
) -> dict[int, str]:
    """Module walk (or inside modules an fx graph calls whole): the model no longer runs, so some code reads a
    swapped conv's attributes (e.g. `self.conv.weight`) outside its call. Without a graph to tell which, put
    the originals back and keep each swap only if the model still runs with it. Returns the undone swaps'
    reasons, by layer index."""
    for index, (original, _) in swaps.items():
        set_submodule(root, layers[index].module_path, original)
    undone = {}
    for index, (original, replacement) in swaps.items():
        set_submodule(root, layers[index].module_path, replacement)
        try:
            run_model(root, inputs)
        except Exception:  # noqa: BLE001 - this swap breaks the model: undo it
            set_submodule(root, layers[index].module_path, original)
            undone[index] = "its attributes (e.g. .weight) are read outside the conv call"
    return undone


def inspect_model(
    model: nn.Module, example_inputs: Inputs, configs: Sequence[ConvertConfig]
) -> list[list[LayerReport]]:
    """What each config would do to each conv, without converting: one list of rows per config.

    Rows have status "converted" for layers the config would convert, with the parameters, MACs and
    weight error the conversion would give (the error from singular values alone).
    """
    analysis = analyze(model, example_inputs)
    views = []
    for config in configs:
        decisions = UniformPlanner(config).plan(analysis).decisions
        rows = []
        for layer in analysis.layers:
            decision = decisions.get(layer.name, layer.unsupported)
            plan = decision if isinstance(decision, LayerPlan) else None
            reason = plan.note if plan else decision
            rows.append(_layer_row(layer, plan, _predicted_error(layer, plan), reason))
        views.append(rows)
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
    except Exception as e:  # the model's own error, reported as bad input
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise ConvertError(
            f"the model rejects inputs of shape {shapes} ({one_line(e)}): "
            "pass `example_inputs` of the shapes it expects"
        ) from e


def _layer_row(layer: ConvLayer, plan: LayerPlan | None, rel_error: float | None, reason: str | None) -> LayerReport:
    """The report row of a layer as it is (`plan` None, kept for `reason`) or as converted by `plan`."""
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
        reason=reason,
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
