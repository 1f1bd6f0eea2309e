"""Latency-aware planning (`--to auto`): per conv, the form that is really faster on the target runtime.

For each standard conv the candidates are: keep it; grouped low-rank with G groups (every power of two
dividing C_in, and C_in itself: depthwise-separable) and r filters per group (powers of two up to full rank),
followed by the pointwise conv. Candidates with no fewer MACs than the conv are dropped, and so are those
another candidate beats on both MACs and weight error. For the rest:

- error: the relative error of the model's output with that layer alone in that form (one forward pass per
  candidate on the example input), and, for the report, of the layer's own output. A calibrated conversion
  measures them on its first batch of real inputs instead, with each candidate's whitened factors (`whiten.py`:
  the SVD of the weight whitened by the layer's input patch covariance on those inputs), closer to what its
  calibrated form will lose than the weight SVD's;
- latency: measured as a one-layer model on the planned runtime: an ONNX file on ONNX Runtime, or the module on
  PyTorch itself, eager or compiled, in the planned dtype and memory format (`latency.py`, cached on disk).

The end-to-end latency is predicted as fixed + scale x (the sum of the chosen candidates' latencies), fitted to
the original and the all-fastest plan, both built from the same analysis and timed end to end (isolated layers
carry session and layout-change overheads that the whole model does not). The search is the multiple-choice
knapsack "least total error within the latency budget" (`search.py`), the total error being the sum of the
squares of the candidates' model-level errors, the budget the original's latency / the target speedup, less
fixed, over scale. "Keep" is always a candidate, so a layer where factorizing is slower stays as it is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from convert.auto import candidates
from convert.auto.config import AutoConfig
from convert.auto.latency import LatencyCache, LayerShape, measure_layer, measure_models
from convert.auto.search import search
from convert.common import Inputs, Progress, no_progress
from convert.report.schema import AutoLayer, AutoReport, Candidate, TorchRuntime
from convert.runtime.devices import device_name, resolve_device
from convert.runtime.quantize import Int8Format, device_formats
from convert.surgery.analysis import Analysis, analyze
from convert.surgery.find import ConvLayer
from convert.surgery.plan import Decision, LayerPlan, Plan
from convert.surgery.verify import output_rel_error, run_model
from convert.surgery.whiten import whitening

__all__ = ["AutoPlan", "LatencyPlanner", "plan_for_speed"]


@dataclasses.dataclass
class AutoPlan:
    """The chosen form of each layer, and the record of how it was chosen (`report`)."""

    plans: dict[str, Decision]  # layer name -> its plan, or why it is kept as it is
    report: AutoReport


@dataclasses.dataclass(frozen=True)
class LatencyPlanner:
    """The `Planner` of target "auto": per standard conv, the form that reaches the target speedup at least error,
    measured on the planned runtime, ONNX Runtime or PyTorch (see the module docstring)."""

    config: AutoConfig = dataclasses.field(default_factory=AutoConfig)
    share: float = 0.85  # measuring the candidates takes most of an auto conversion

    def plan(self, analysis: Analysis, progress: Progress = no_progress) -> Plan:
        config, notify = self.config, progress
        cache = LatencyCache(Path(config.cache_dir)) if config.cache_dir else LatencyCache.default()
        found = analysis.candidates()
        layers = [layer for layer in found if layer.spec.groups == 1 and not layer.spec.transposed]
        root, inputs = analysis.traced.module, analysis.inputs
        captured = candidates.layer_inputs(root, layers, inputs)  # the shapes that are timed
        probe = inputs if analysis.calibration is None else analysis.calibration.batches[0]  # errors measured on
        real = captured if analysis.calibration is None else candidates.layer_inputs(root, layers, probe)
        reference = run_model(root, probe)
        rows: list[AutoLayer] = []
        forms: list[list[LayerPlan | None]] = []  # per row, the plan of each candidate
        bench = dataclasses.replace(config.bench(), runs=max(config.runs, 30))
        int8, float_ms = None, None
        if config.quantize:  # the format the original runs fastest in, and the float original, side by side
            notify("timing the original in each INT8 format", 0.0)
            formats = device_formats(config.quantize, resolve_device(config.device).require_provider())
            float_ms, *int8_ms = measure_models([root] * (1 + len(formats)), inputs, bench, cache, [None, *formats])
            int8 = formats[min(range(len(formats)), key=int8_ms.__getitem__)]
        for index, layer in enumerate(layers):
            x = captured.get(layer.name)
            if x is None:
                continue
            notify(f"measuring errors of {layer.name}", index / len(layers))
            part = _layer_progress(notify, index, len(layers))
            probed = (x, real[layer.name], analysis.calibration is not None)
            row, form = _measure(layer, probed, root, probe, reference, config, cache, part, int8)
            rows.append(row)
            forms.append(form)
        # Isolated layers carry their own session and layout-change overheads, and the model has other ops: fit
        # end-to-end ms = fixed + scale * (sum of the layers' ms) to the original and the all-fastest plan, both
        # built from this analysis and timed end to end (in the INT8 format, when planning for one).
        fastest = [min(range(len(r.candidates)), key=lambda j, r=r: r.candidates[j].latency_ms) for r in rows]
        notify("timing the original and the fastest plan end to end", 0.97)
        fastest_model = analysis.build(_plans(rows, forms, fastest, found)).module
        keep_ms, fastest_ms = measure_models([root, fastest_model], inputs, bench, cache, [int8, int8])
        baseline_ms = keep_ms if float_ms is None else float_ms  # the target is over the float original
        keep_sum, fastest_sum = sum(r.candidates[0].latency_ms for r in rows), _sum_ms(rows, fastest)
        if keep_sum - fastest_sum > 1e-9 and keep_ms > fastest_ms:
            scale = (keep_ms - fastest_ms) / (keep_sum - fastest_sum)
            fixed_ms = keep_ms - scale * keep_sum
        else:  # nothing to fit: the layers' ms as measured, the rest of the model as what is left
            scale, fixed_ms = 1.0, max(0.0, keep_ms - keep_sum)
        choice, frontier = search(rows, (baseline_ms / config.target_speedup - fixed_ms) / scale)
        for row, j in zip(rows, choice, strict=True):
            row.chosen = j
        predicted_ms = fixed_ms + scale * _sum_ms(rows, choice)
        notes = []
        if predicted_ms > baseline_ms / config.target_speedup * (1 + 1e-9):
            notes.append(
                f"target speedup {config.target_speedup:g}x is out of reach: the fastest plan measured "
                f"{baseline_ms / fastest_ms:.2f}x end to end"
            )
        report = AutoReport(
            target_speedup=config.target_speedup,
            max_error=config.max_error,
            device=config.bench().device,
            baseline_ms=baseline_ms,
            fastest_ms=fastest_ms,
            fixed_ms=fixed_ms,
            scale=scale,
            predicted_ms=predicted_ms,
            predicted_speedup=baseline_ms / predicted_ms if predicted_ms > 0 else float("inf"),
            layers=rows,
            frontier=[[fixed_ms + scale * ms, error] for ms, error in frontier],
            measured=cache.measured,
            cached=cache.hits,
            cache_dir=str(cache.folder),
            notes=notes,
            runtime=config.runtime,
            torch=_torch_runtime(config),
            quantize=None if int8 is None else int8.name,
            quantized_ms=None if int8 is None else keep_ms,
            errors_on=_errors_on(analysis),
        )
        notify("planned", 1.0)
        return Plan(_plans(rows, forms, choice, found), report)


def plan_for_speed(
    model: nn.Module, example_inputs: Inputs, config: AutoConfig | None = None, *, progress: Progress | None = None
) -> AutoPlan:
    """Choose, per standard conv, keep or a factorized form, to reach `config.target_speedup` at least error.

    The plan goes to `convert_model(model, inputs, ConvertConfig(target="auto"), plans=plan.plans)`; in one step,
    `convert_model(model, inputs, ConvertConfig(target="auto"), planner=LatencyPlanner(config))` traces once.

    Raises:
        ConvertError: when the model rejects the inputs, or the device cannot run here.
    """
    plan = LatencyPlanner(config or AutoConfig()).plan(analyze(model, example_inputs), progress or no_progress)
    return AutoPlan(plan.decisions, plan.auto)


def _layer_progress(notify: Progress, index: int, count: int) -> Progress:
    """Progress of layer `index` of `count` as a part of the whole."""
    return lambda what, fraction: notify(what, (index + fraction) / count)


def _measure(
    layer: ConvLayer,
    probed: tuple[torch.Tensor, torch.Tensor, bool],
    root: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    reference: object,
    config: AutoConfig,
    cache: LatencyCache,
    progress: Progress,
    int8: Int8Format | None = None,
) -> tuple[AutoLayer, list[LayerPlan | None]]:
    """The candidates of one layer with their MACs, errors and latencies (as one-layer models quantized in `int8`
    when given). `probed`: its input at its first call on the example input (timed), on `inputs` (the errors are
    measured on them), and whether those are calibration inputs (then the candidates' factors are whitened)."""
    x, real, calibrated = probed
    shape = LayerShape(layer.spec, tuple(x.shape), layer.bias is not None)
    svds: dict[int, tuple] = {}  # groups -> group_svd, shared by the shortlist and the errors
    form: list[LayerPlan | None] = [None, *candidates.shortlist(layer, config.max_candidates, svds)]
    whitenings = {g: whitening(layer, g, [real]) for g in svds} if calibrated else {}  # per group count
    modules = [None] + [
        candidates.replacement(layer, plan, real, svds[plan.groups], whitenings.get(plan.groups)) for plan in form[1:]
    ]
    errors = [0.0] + [candidates.layer_error(layer, m, real) for m in modules[1:]]
    if config.max_error is not None:
        kept = [i for i, e in enumerate(errors) if e <= config.max_error]
        form, errors, modules = [form[i] for i in kept], [errors[i] for i in kept], [modules[i] for i in kept]
    effects = [0.0] + [output_rel_error(reference, candidates.run_with(root, layer, m, inputs)) for m in modules[1:]]
    timing = lambda _what, f: progress(f"timing {layer.name}", f)  # noqa: E731 - one line, named for its length
    latencies = measure_layer(shape, form, config.bench(), cache, timing, int8)
    rows = [
        Candidate(
            candidates.label(layer, plan),
            plan and plan.groups,
            plan and plan.rank,
            candidates.macs(layer, plan, x),
            e,
            o,
            ms,
        )
        for plan, e, o, ms in zip(form, errors, effects, latencies, strict=True)
    ]
    return AutoLayer(layer.name, list(x.shape), rows, 0), form


def _plans(
    rows: list[AutoLayer], forms: list[list[LayerPlan | None]], choice: list[int], found: list[ConvLayer]
) -> dict[str, Decision]:
    """Per layer name, the plan of the chosen candidate, or why the layer is kept."""
    plans: dict[str, Decision] = {
        layer.name: "auto plans standard convs only (transposed or grouped: --to separable)"
        if layer.spec.groups > 1 or layer.spec.transposed
        else "auto: not reached by the example input"
        for layer in found
    }
    for row, form, j in zip(rows, forms, choice, strict=True):
        chosen, plan = row.candidates[j], form[j]
        if plan is None:
            fastest = min(row.candidates, key=lambda c: c.latency_ms)
            plans[row.name] = (
                "auto: kept (no candidate is faster)"
                if fastest is chosen
                else f"auto: kept (the target is met without it; {fastest.label} would take "
                f"{fastest.latency_ms:.3g} ms vs {chosen.latency_ms:.3g} ms)"
            )
        else:
            plans[row.name] = dataclasses.replace(
                plan, note=f"auto: {chosen.label}, {row.candidates[0].latency_ms:.3g} -> {chosen.latency_ms:.3g} ms"
            )
    return plans


def _errors_on(analysis: Analysis) -> str:
    """What the candidates' errors were measured on (the report's `errors_on`)."""
    calibration = analysis.calibration
    if calibration is None:
        return AutoReport.errors_on
    count = int(calibration.batches[0][0].shape[0])
    return f"the first {count} calibration inputs ({calibration.description}), whitened factors"


def _sum_ms(rows: list[AutoLayer], choice: list[int]) -> float:
    return sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True))


def _torch_runtime(config: AutoConfig) -> TorchRuntime | None:
    """The PyTorch runtime's settings the plan was measured with (None on ONNX Runtime)."""
    if config.runtime != "torch":
        return None
    device = resolve_device(config.device).torch_device
    return TorchRuntime(torch.__version__, config.compile, config.dtype, config.channels_last, device_name(device))
