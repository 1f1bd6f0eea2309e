"""What tracing and finding learn about a model (`analyze`), and the rewrite of a copy of it from decisions (`build`).

The analysis runs on an eval-mode copy of the model (its deployment mode); the rewrite works on another copy of the
user's model as given (its class, modes and Python kept): conv modules are swapped at their parents' attributes,
and only a module whose forward calls a conv as a function becomes an fx graph module (`rewrite.rewrite_calls`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from convert.common import Inputs, Progress, as_inputs, no_progress
from convert.errors import ConvertError, one_line
from convert.forward import forward_hint
from convert.report.schema import CalibrationReport, LayerReport
from convert.surgery.apply import AppliedLayer
from convert.surgery.calibrate import Calibration, calibrate
from convert.surgery.find import ConvLayer, find_convs
from convert.surgery.plan import Decision, LayerPlan, conv_cost, svd_factors
from convert.surgery.rewrite import build_replacement, copy_hooks, plain_conv, rewrite_calls, swap_module
from convert.surgery.trace import Traced, trace
from convert.surgery.verify import run_model

__all__ = ["Analysis", "Built", "analyze", "functional_as_modules", "layer_row"]


@dataclasses.dataclass
class Analysis:
    """What tracing and finding learned about a model: planners decide from it, `build` rewrites from it."""

    model: nn.Module  # the user's model, as given: never changed
    traced: Traced  # the graph of an eval-mode copy of it
    layers: list[ConvLayer]  # every conv found, in graph order
    inputs: tuple[torch.Tensor, ...]
    reference: Any  # the model's output on `inputs`, in eval mode
    # real inputs, when the conversion is calibrated: planners measure errors on them, `build` fits factors to them
    calibration: Calibration | None = None

    def candidates(self) -> list[ConvLayer]:
        """The layers a planner may convert."""
        return [layer for layer in self.layers if layer.unsupported is None]

    def build(
        self,
        decisions: Mapping[str, Decision],
        calibration: Calibration | None = None,
        progress: Progress = no_progress,
    ) -> Built:
        """A copy of the user's model with the planned convs rewritten in place (the analysis is not changed).

        A conv whose swap breaks the model (code that reads its attributes), or whose functional calls sit in a
        module fx cannot trace, is left as it is, with the reason. With `calibration`, the factors are then fitted
        to those inputs (`calibrate.py`); else they come from the weights alone.
        """
        root = copy.deepcopy(self.model)
        rows: list[LayerReport] = []
        replaced: dict[str, str] = {}
        swaps: dict[int, tuple[nn.Module, nn.Module]] = {}
        functional: dict[str, list[tuple[int, ConvLayer, nn.Module]]] = {}  # owner -> its planned calls
        for index, layer in enumerate(self.layers):
            plan = decisions.get(layer.name)
            if not isinstance(plan, LayerPlan):
                rows.append(layer_row(layer, None, None, layer.unsupported or plan))
                continue
            path = layer.module_path or layer.owner
            replacement, error = _replacement(layer, plan, root.get_submodule(path).training)
            rows.append(layer_row(layer, plan, error, plan.note))
            if layer.module_path is None:
                functional.setdefault(layer.owner, []).append((index, layer, replacement))
                continue
            swaps[index] = (root.get_submodule(layer.module_path), replacement)
            swap_module(root, layer.module_path, replacement)
            replaced[layer.name] = layer.module_path
        notes = []
        for owner, calls in sorted(functional.items(), key=lambda item: -item[0].count(".") - bool(item[0])):
            try:
                was_graph = isinstance(root.get_submodule(owner), torch.fx.GraphModule)
                root, paths = rewrite_calls(root, owner, [(layer, replacement) for _, layer, replacement in calls])
            except Exception as e:  # noqa: BLE001 - fx cannot trace the owner: its convs stay
                for index, layer, _ in calls:
                    why = f"its functional calls are in {owner or 'the model'}, which fx cannot trace ({one_line(e)})"
                    rows[index] = layer_row(layer, None, None, why)
                continue
            replaced.update(paths)
            if not was_graph:
                notes.append(
                    f"rewrite: {owner or 'the model'} calls {', '.join(layer.name for _, layer, _ in calls)} as "
                    "functions: it became an fx graph module (the Python of its forward is fixed as traced)"
                )
        try:
            output = run_model(root, self.inputs, training=False)
        except Exception:  # noqa: BLE001 - a swapped conv's attributes are read where no graph showed it
            undone = _keep_swaps_that_run(root, self.layers, swaps, self.inputs)
            for index, reason in undone.items():
                rows[index] = layer_row(self.layers[index], None, None, reason)
                replaced.pop(self.layers[index].name, None)
            output = run_model(root, self.inputs, training=False)
        for index, (original, replacement) in swaps.items():
            if self.layers[index].name in replaced:
                copy_hooks(original, replacement)
        applied = [AppliedLayer.of(layer, decisions[layer.name]) for layer in self.layers if layer.name in replaced]
        report = None
        if calibration is not None:
            report = self._calibrate(root, decisions, replaced, swaps, rows, calibration, progress)
            output = run_model(root, self.inputs, training=False)
        return Built(root, rows, replaced, output, notes, applied, report)

    def _calibrate(
        self,
        root: nn.Module,
        decisions: Mapping[str, Decision],
        replaced: dict[str, str],
        swaps: dict[int, tuple[nn.Module, nn.Module]],
        rows: list[LayerReport],
        calibration: Calibration,
        progress: Progress,
    ) -> CalibrationReport:
        """Fit the converted layers of `root` to the calibration inputs; their rows get the errors before and after.
        Until it is calibrated, a layer computes the original conv: the copy's own module, or a conv module of a
        functional call."""
        converted = [(index, layer) for index, layer in enumerate(self.layers) if layer.name in replaced]
        layers = [
            (
                layer,
                decisions[layer.name],
                replaced[layer.name],
                swaps[index][0]
                if index in swaps
                else plain_conv(layer.spec, layer.weight.detach(), _detached(layer.bias)),
            )
            for index, layer in converted
        ]
        calibrated = calibrate(self, root, layers, calibration, progress)
        for index, layer in converted:
            fit = calibrated.fits.get(layer.name)
            if fit is None:
                continue
            notes = [note for note in (rows[index].reason, fit.note) if note]
            rows[index] = dataclasses.replace(
                rows[index],
                reason="; ".join(notes) or None,
                weight_rel_error=rows[index].weight_rel_error if fit.factors is None else fit.factors.rel_error,
                calibration_error_before=fit.before,
                calibration_error_after=fit.after,
            )
        return calibrated.report


@dataclasses.dataclass
class Built:
    """A rewritten copy of the model and its per-layer rows."""

    module: nn.Module
    rows: list[LayerReport]
    replaced: dict[str, str]  # converted layer name -> module path of its replacement
    output: Any  # its output on the analysis' inputs, in eval mode
    notes: list[str]  # modules that became graph modules, and why
    applied: list[AppliedLayer]  # the converted layers, as plan.json records them
    calibration: CalibrationReport | None = None  # how the factors were fitted to real inputs, when they were


def analyze(model: nn.Module, example_inputs: Inputs, exported: torch.export.ExportedProgram | None = None) -> Analysis:
    """Trace an eval-mode copy of `model` and find its convs (the model is not changed).

    Args:
        model: the user's model, in any mode.
        example_inputs: one tensor or a sequence of positional inputs.
        exported: the ExportedProgram `model` was made from (a .pt2: `model` is its graph).

    Raises:
        ConvertError: when the model cannot run in eval mode on the example inputs.
    """
    inputs = as_inputs(example_inputs)
    work = copy.deepcopy(model).eval()
    try:
        reference = run_model(work, inputs)
    except Exception as e:  # the model's own error, reported as bad input
        shapes = ", ".join("x".join(map(str, t.shape)) for t in inputs)
        raise ConvertError(
            f"the model cannot run in eval mode on inputs of shape {shapes} ({one_line(e)}): "
            f"{forward_hint(work, inputs, e)}"
        ) from e
    traced = trace(work, inputs, reference, exported)
    return Analysis(model, traced, find_convs(traced), inputs, reference)


def functional_as_modules(analysis: Analysis, names: set[str]) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A copy of the model in which the functional convs `names` are calls of conv modules (the same function),
    e.g. for forward hooks on them; per name, its module. Names whose owner fx cannot trace are left out."""
    root = copy.deepcopy(analysis.model)
    by_owner: dict[str, list[ConvLayer]] = {}
    for layer in analysis.layers:
        if layer.name in names and layer.module_path is None and layer.spec is not None:
            by_owner.setdefault(layer.owner, []).append(layer)
    modules = {}
    for owner, layers in sorted(by_owner.items(), key=lambda item: -item[0].count(".") - bool(item[0])):
        convs = [(layer, plain_conv(layer.spec, layer.weight.detach(), _detached(layer.bias))) for layer in layers]
        try:
            root, paths = rewrite_calls(root, owner, convs)
        except Exception:  # noqa: BLE001 - left as functions: no hooks on them
            continue
        modules |= {name: root.get_submodule(path) for name, path in paths.items()}
    return root, modules


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


def layer_row(layer: ConvLayer, plan: LayerPlan | None, rel_error: float | None, reason: str | None) -> LayerReport:
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


def _replacement(layer: ConvLayer, plan: LayerPlan, training: bool) -> tuple[nn.Module, float]:
    """The factorized module of `layer` under `plan` (in `training` mode), and its weight error."""
    factors = svd_factors(layer, plan)
    replacement = build_replacement(layer.spec, factors, layer.bias, training, layer.weight.requires_grad)
    return replacement, factors.rel_error


def _keep_swaps_that_run(
    root: nn.Module,
    layers: list[ConvLayer],
    swaps: dict[int, tuple[nn.Module, nn.Module]],
    inputs: tuple[torch.Tensor, ...],
) -> dict[int, str]:
    """The model no longer runs: some code reads a swapped conv's attributes outside its call. Put the originals
    back and keep each swap only if the model still runs with it. Returns the undone swaps' reasons, by index."""
    for index, (original, _) in swaps.items():
        swap_module(root, layers[index].module_path, original)
    undone = {}
    for index, (original, replacement) in swaps.items():
        swap_module(root, layers[index].module_path, replacement)
        try:
            run_model(root, inputs, training=False)
        except Exception:  # noqa: BLE001 - this swap breaks the model: undo it
            swap_module(root, layers[index].module_path, original)
            undone[index] = "its attributes (e.g. .weight) are read outside the conv call"
    return undone


def _positions(shapes: list[tuple[int, ...]]) -> int:
    """Positions (batch x spatial) summed over the call sites."""
    return sum(shape[0] * math.prod(shape[2:]) for shape in shapes if shape)
