"""The conversion pipeline: trace -> find (`analyze`) -> plan (a `Planner`) -> factorize -> rewrite (`Analysis.build`)
-> verify -> report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convert.common import Inputs, Progress, no_progress, span
from convert.conversion import Conversion
from convert.errors import ConvertError, one_line
from convert.report.schema import LayerReport, Report, Totals
from convert.surgery.analysis import analyze, layer_row
from convert.surgery.calibrate import Calibration, CalibrationConfig, prepare_calibration
from convert.surgery.config import ConvertConfig
from convert.surgery.factorize import block_diagonal, singular_values, truncation_error
from convert.surgery.find import ConvLayer
from convert.surgery.plan import (
    Decision,
    GivenPlanner,
    LayerPlan,
    Planner,
    UniformPlanner,
    check_name_filters,
    standard_weight,
)
from convert.surgery.verify import compare, output_rel_error, run_model

__all__ = ["ConversionResult", "convert_model", "inspect_model"]

ConversionResult = Conversion  # the name of the first releases


def convert_model(
    model: nn.Module,
    example_inputs: Inputs,
    config: ConvertConfig | None = None,
    *,
    planner: Planner | None = None,
    plans: Mapping[str, Decision] | None = None,
    exported: torch.export.ExportedProgram | None = None,
    calibration: CalibrationConfig | Calibration | Any | None = None,
    progress: Progress | None = None,
) -> Conversion:
    """Rewrite the standard convolutions of `model` into depthwise-separable or grouped ones.

    The model is not changed: the result is a copy of it, of its class, with its conv modules swapped in place (a
    module whose forward calls a conv as a function becomes an fx graph module; the report says which), in the
    same train/eval mode, dtype and device. It is checked against the original in eval and in train mode.

    Args:
        model: any nn.Module.
        example_inputs: one tensor or a sequence of positional input tensors the model accepts.
        config: target, rank and filters; defaults to rank-1 depthwise-separable.
        planner: who decides each layer's form: default `UniformPlanner(config)`, or for target "auto"
            `convert.auto.LatencyPlanner()` (which measures on ONNX Runtime).
        plans: decisions made elsewhere, per layer name (e.g. `plan_for_speed(...).plans`): the same as
            `planner=GivenPlanner(plans)`.
        exported: the ExportedProgram the model came from, if any (its graph is rewritten directly).
        calibration: unlabeled inputs to fit the factors to (a tensor (N, ...), a tensor per input, any source
            `load_data` takes), or a CalibrationConfig: each converted layer is then fitted, in execution order, to
            map its inputs in the model converted so far to the original layer's outputs (whitened SVD and a
            least-squares refit of the 1x1 conv), instead of taking its weight's SVD alone. The planner measures
            on them too.
        progress: called with (stage, fraction done) as the stages finish.

    Returns:
        The Conversion: the original, the inputs, the converted model and its Report.

    Raises:
        ConvertError: when the model rejects the example inputs, an option fits no layer (`groups`, an `include` or
            `exclude` that matches no conv), or the calibration inputs do not fit the model (shape, dtype, NaN or
            infinite values).

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
    if calibration is not None and not isinstance(calibration, Calibration):  # bad inputs fail before any work
        calibration = prepare_calibration(calibration, model, example_inputs)
    analysis = analyze(model, example_inputs, exported)
    check_name_filters(analysis.layers, config)
    analysis.calibration = calibration
    traced, inputs = analysis.traced, analysis.inputs
    plan_start = 0.1
    clock.done("trace", plan_start)
    plan_end = plan_start + planner.share
    plan = planner.plan(analysis, span(notify, plan_start, plan_end))
    clock.done("plan", plan_end)
    build_end = plan_end + 0.7 * (1 - plan_end)
    built = analysis.build(plan.decisions, calibration, span(notify, plan_end, build_end))
    clock.done("factorize", build_end)  # calibration included (report.calibration.seconds has its share)
    converted, rows = built.module, built.rows
    notes = traced.notes + built.notes
    train_error = _train_mode_error(model, converted, inputs, notes)
    clock.done("verify", plan_end + 0.9 * (1 - plan_end))
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
        trace=traced.strategy,
        trace_notes=notes,
        options=dataclasses.asdict(config),
        input_shapes=[list(t.shape) for t in inputs],
        input_dtype=str(inputs[0].dtype).removeprefix("torch.") if inputs else "",
        layers=rows,
        totals=totals,
        output_rel_error=output_rel_error(analysis.reference, built.output),
        train_output_rel_error=train_error,
        seconds=clock.seconds,
        versions={"torch": torch.__version__},
        auto=plan.auto,
        calibration=built.calibration,
    )
    clock.done("report", 1.0)
    return Conversion(model, inputs, converted, report, built.replaced, applied=built.applied)


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
        check_name_filters(analysis.layers, config)
        decisions = UniformPlanner(config).plan(analysis).decisions
        rows = []
        for layer in analysis.layers:
            decision = decisions.get(layer.name, layer.unsupported)
            plan = decision if isinstance(decision, LayerPlan) else None
            reason = plan.note if plan else decision
            rows.append(layer_row(layer, plan, _predicted_error(layer, plan), reason))
        views.append(rows)
    return views


def _predicted_error(layer: ConvLayer, plan: LayerPlan | None) -> float | None:
    if plan is None:
        return None
    weight, outer = standard_weight(layer), layer.spec.groups
    if not plan.pointwise:
        return block_diagonal(weight, plan.groups, outer).rel_error
    return truncation_error(singular_values(weight, plan.groups, outer), plan.rank)


def _train_mode_error(
    model: nn.Module, converted: nn.Module, inputs: tuple[torch.Tensor, ...], notes: list[str]
) -> float | None:
    """The converted model's error against the original in train mode (same seed: same dropout masks; batch
    statistics), or None with a note when the original cannot run in train mode on these inputs."""
    try:
        return compare(model, converted, inputs, training=True)
    except Exception as e:  # noqa: BLE001 - e.g. BatchNorm after global pooling on a batch of 1
        notes.append(f"train mode: not checked, the model cannot run in train mode on these inputs ({one_line(e)})")
        return None


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _count_macs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run_model(model, inputs, training=False)
    return counter.get_total_flops() // 2
