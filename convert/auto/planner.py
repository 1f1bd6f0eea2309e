"""Latency-aware planning (`--to auto`): per conv, the form that is really faster on the target runtime.

For each standard conv the candidates are: keep it; grouped low-rank with G groups (every power of two
dividing C_in, and C_in itself: depthwise-separable) and r filters per group (powers of two up to full rank),
followed by the pointwise conv. Candidates with no fewer MACs than the conv are dropped, and so are those
another candidate beats on both MACs and weight error. For the rest:

- error: the relative error of the model's output with that layer alone in that form (one forward pass per
  candidate on the example input), and, for the report, of the layer's own output;
- latency: measured as a one-layer ONNX model on ONNX Runtime (`latency.py`, cached on disk).

The search is the multiple-choice knapsack "least total weighted error within the latency budget", solved
by dynamic programming over latency, the total error being the sum of the squares of the candidates'
model-level errors. The budget is the original model's end-to-end latency divided by the target
speedup, less the time of everything that is not a conv (the end-to-end latency minus the sum of the convs'
own latencies). "Keep" is always a candidate, so a layer where factorizing is slower stays as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from convert.auto.latency import LatencyCache, LayerShape, measure_layer
from convert.common import Progress, as_inputs
from convert.errors import ConvertError
from convert.report.schema import AutoLayer, AutoReport, Candidate
from convert.runtime.bench import BenchConfig, benchmark_onnx
from convert.runtime.export import OnnxConfig, export_onnx
from convert.surgery.config import ConvertConfig
from convert.surgery.factorize import full_rank, group_svd, low_rank, truncation_error
from convert.surgery.find import ConvLayer, find_convs
from convert.surgery.pipeline import convert_model
from convert.surgery.plan import LayerPlan, conv_cost
from convert.surgery.rewrite import build_replacement, plain_conv
from convert.surgery.trace import trace
from convert.surgery.verify import output_rel_error, run_model

BINS = 2000  # latency resolution of the plan search: the budget in this many steps


@dataclasses.dataclass(frozen=True)
class AutoConfig:
    """What `--to auto` aims for and where it measures."""

    target_speedup: float = 2.0  # end-to-end, original latency / converted latency, on `device`
    max_error: float | None = None  # drop candidates whose layer output error (relative) is above this
    device: str = "cpu"  # cpu | cuda | auto: the ONNX Runtime provider the plan is for
    threads: int | None = None  # CPU intra-op threads; None: the physical cores
    runs: int = 30  # timed runs per candidate layer (median kept)
    warmup: int = 5
    max_candidates: int = 10  # per layer, after dropping dominated ones (evenly spread over MACs)
    cache_dir: str | None = None  # None: LatencyCache.default()

    def __post_init__(self) -> None:
        if not self.target_speedup >= 1.0:
            raise ConvertError(f"target speedup {self.target_speedup} is not valid: use 1.0 or more, e.g. 2")
        if self.max_error is not None and not self.max_error > 0:
            raise ConvertError(f"max error {self.max_error} is not valid: use a positive fraction, e.g. 0.1")
        if self.max_candidates < 2:
            raise ConvertError("max_candidates must be at least 2")
        self.bench()  # validates device, threads, warm-up and runs

    def bench(self) -> BenchConfig:
        return BenchConfig(device=self.device, threads=self.threads, warmup=self.warmup, runs=self.runs)


@dataclasses.dataclass
class AutoPlan:
    """The chosen form of each layer, and the record of how it was chosen (`report`)."""

    plans: dict[str, LayerPlan | str]  # layer name -> its plan, or why it is kept as it is
    report: AutoReport


def plan_for_speed(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    config: AutoConfig | None = None,
    *,
    progress: Progress | None = None,
) -> AutoPlan:
    """Choose, per standard conv, keep or a factorized form, to reach `config.target_speedup` at least error.

    The plan goes to `convert_model(model, inputs, ConvertConfig(target="auto"), plans=plan.plans)`.

    Raises:
        ConvertError: when the model rejects the inputs, or the device cannot run here.
    """
    config = config or AutoConfig()
    inputs = as_inputs(example_inputs)
    notify = progress or (lambda _what, _fraction: None)
    cache = LatencyCache(Path(config.cache_dir)) if config.cache_dir else LatencyCache.default()
    reference = run_model(model, inputs)
    traced = trace(copy.deepcopy(model), inputs, reference)
    found = [layer for layer in find_convs(traced) if layer.skip is None]
    layers = [layer for layer in found if layer.spec.groups == 1 and not layer.spec.transposed]
    captured = _layer_inputs(traced.module, layers, inputs)
    traced_reference = run_model(traced.module, inputs)
    rows: list[AutoLayer] = []
    forms: list[list[LayerPlan | None]] = []  # per row, the plan of each candidate
    for index, layer in enumerate(layers):
        x = captured.get(layer.name)
        if x is None:
            continue
        shape = LayerShape(layer.spec, tuple(x.shape), layer.bias is not None)
        svds: dict[int, tuple] = {}  # groups -> group_svd, shared by the shortlist and the errors
        form: list[LayerPlan | None] = [None, *_shortlist(layer, config.max_candidates, svds)]
        replacements = [None] + [_replacement(layer, plan, x, svds[plan.groups]) for plan in form[1:]]
        errors = [0.0] + [_layer_error(layer, r, x) for r in replacements[1:]]
        if config.max_error is not None:
            kept = [i for i, e in enumerate(errors) if e <= config.max_error]
            form, errors, replacements = (
                [form[i] for i in kept],
                [errors[i] for i in kept],
                [replacements[i] for i in kept],
            )
        notify(f"measuring errors of {layer.name}", index / len(layers))
        effects = [0.0] + [
            output_rel_error(traced_reference, _run_with(traced.module, layer, r, inputs)) for r in replacements[1:]
        ]

        def on_progress(_what: str, fraction: float, index: int = index, name: str = layer.name) -> None:
            notify(f"timing {name}", (index + fraction) / len(layers))

        latencies = measure_layer(shape, form, config.bench(), cache, on_progress)
        candidates = [
            Candidate(_label(layer, plan), plan and plan.groups, plan and plan.rank, _macs(layer, plan, x), e, o, ms)
            for plan, e, o, ms in zip(form, errors, effects, latencies, strict=True)
        ]
        rows.append(AutoLayer(layer.name, list(x.shape), candidates, 0))
        forms.append(form)
    # Isolated layers carry their own session and layout-change overheads, and the model has other ops: fit
    # end-to-end ms = fixed + scale * (sum of the layers' ms) to the original and the all-fastest plan, both built
    # and timed end to end.
    fastest = [min(range(len(r.candidates)), key=lambda j, r=r: r.candidates[j].latency_ms) for r in rows]
    notify("timing the original and the fastest plan end to end", 0.97)
    fastest_model = convert_model(
        model, inputs, ConvertConfig(target="auto"), plans=_plans(rows, forms, fastest, found)
    )
    baseline_ms, fastest_ms = _model_latencies([model, fastest_model.model], inputs, config)
    keep_sum, fastest_sum = sum(r.candidates[0].latency_ms for r in rows), _sum_ms(rows, fastest)
    if keep_sum - fastest_sum > 1e-9 and baseline_ms > fastest_ms:
        scale = (baseline_ms - fastest_ms) / (keep_sum - fastest_sum)
        fixed_ms = baseline_ms - scale * keep_sum
    else:  # nothing to fit: the layers' ms as measured, the rest of the model as what is left
        scale, fixed_ms = 1.0, max(0.0, baseline_ms - keep_sum)
    choice, frontier = _search(rows, (baseline_ms / config.target_speedup - fixed_ms) / scale)
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
    )
    notify("planned", 1.0)
    return AutoPlan(_plans(rows, forms, choice, found), report)


def _plans(
    rows: list[AutoLayer], forms: list[list[LayerPlan | None]], choice: list[int], found: list[ConvLayer]
) -> dict[str, LayerPlan | str]:
    """Per layer name, the plan of the chosen candidate, or why the layer is kept."""
    plans: dict[str, LayerPlan | str] = {
        layer.name: "auto plans standard convs only (transposed or grouped: --to separable)"
        for layer in found
        if layer.spec.groups > 1 or layer.spec.transposed
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


def _sum_ms(rows: list[AutoLayer], choice: list[int]) -> float:
    return sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True))


def _shortlist(layer: ConvLayer, limit: int, svds: dict[int, tuple]) -> list[LayerPlan]:
    """Factorized forms with fewer MACs than the conv that no other form beats on MACs and weight error."""
    spec, weight = layer.spec, layer.weight
    c_in, c_out, k = spec.in_channels, spec.out_channels, math.prod(spec.kernel)
    dense = c_out * c_in * k
    groups = sorted({g for g in _powers_of_two(c_in) if c_in % g == 0} | {c_in})
    options = []  # (macs per position, weight error, plan)
    for g in groups:
        exact = full_rank(c_out, c_in, k, g)
        svds[g] = group_svd(weight, g)
        svals = svds[g][1]
        for r in sorted(set(_powers_of_two(exact)) | {exact}):
            macs = r * c_in * k + g * r * c_out
            if macs < dense:
                options.append((macs, truncation_error(svals, r), LayerPlan(g, r, True, exact)))
    options.sort(key=lambda o: (o[0], o[1]))
    front, best = [], math.inf
    for _, error, plan in options:
        if error < best - 1e-12:
            front.append(plan)
            best = error
    if len(front) > limit:  # evenly spread, always keeping the cheapest and the most accurate
        step = (len(front) - 1) / (limit - 1)
        front = [front[round(i * step)] for i in range(limit)]
    return front


def _powers_of_two(n: int) -> list[int]:
    return [1 << i for i in range(n.bit_length()) if 1 << i <= n]


def _replacement(layer: ConvLayer, plan: LayerPlan, x: torch.Tensor, svd: tuple) -> nn.Module:
    """The module `plan` would put in place of the layer (eval mode, on `x`'s device and dtype)."""
    factors = low_rank(layer.weight, plan.groups, plan.rank, svd=svd)
    return build_replacement(layer.spec, factors, layer.bias, False, False).to(x.device, x.dtype).eval()


def _layer_error(layer: ConvLayer, replacement: nn.Module, x: torch.Tensor) -> float:
    """Relative error of the layer's output on its real input `x` when `replacement` takes its place."""
    original = plain_conv(layer.spec, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    with torch.no_grad():
        return output_rel_error(original.to(x.device, x.dtype)(x), replacement(x))


def _macs(layer: ConvLayer, plan: LayerPlan | None, x: torch.Tensor) -> int:
    """MACs at the first call site (where `x` is the input)."""
    out_positions = sum(s[0] * math.prod(s[2:]) for s in layer.out_shapes[:1])
    return conv_cost(layer.spec, plan, False, x.shape[0] * math.prod(x.shape[2:]), out_positions)[1]


def _label(layer: ConvLayer, plan: LayerPlan | None) -> str:
    if plan is None:
        return "keep"
    if plan.groups == layer.spec.in_channels:
        return f"separable r{plan.rank}"
    return f"grouped g{plan.groups} r{plan.rank}"


def _layer_inputs(root: nn.Module, layers: list[ConvLayer], inputs: tuple[torch.Tensor, ...]) -> dict:
    """The input of each layer at its first call on the example input."""
    captured: dict[str, torch.Tensor] = {}
    by_node = {node: layer.name for layer in layers if not layer.module for node in layer.nodes}
    handles = []
    for layer in layers:
        if layer.module:

            def hook(_module, args, name=layer.name):
                captured.setdefault(name, args[0].detach())

            handles.append(root.get_submodule(layer.module).register_forward_pre_hook(hook))
    try:
        if by_node and isinstance(root, fx.GraphModule):

            class Recorder(fx.Interpreter):
                def run_node(self, node):
                    if node in by_node:
                        captured.setdefault(by_node[node], self.env[node.args[0]].detach())
                    return super().run_node(node)

            with torch.no_grad():
                Recorder(root).run(*inputs)
        else:
            run_model(root, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _run_with(root: nn.Module, layer: ConvLayer, replacement: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """The model's output with `replacement` computing the layer (at every call site), nothing else changed."""
    nodes = set(layer.nodes)
    if layer.module:
        handle = root.get_submodule(layer.module).register_forward_hook(lambda _m, args, _out: replacement(args[0]))
        try:
            return run_model(root, inputs)
        finally:
            handle.remove()

    class Replaced(fx.Interpreter):
        def run_node(self, node: fx.Node):
            if node in nodes:
                return replacement(self.env[node.args[0]])
            return super().run_node(node)

    with torch.no_grad():
        return Replaced(root).run(*inputs)


def _model_latencies(models: list[nn.Module], inputs: tuple[torch.Tensor, ...], config: AutoConfig) -> list[float]:
    """Median end-to-end latencies of `models`, timed side by side on the runtime the layers are timed on."""
    with tempfile.TemporaryDirectory(prefix="convert-auto-") as folder:
        paths = [Path(folder) / f"model{i}.onnx" for i in range(len(models))]
        for m, path in zip(models, paths, strict=True):
            # timing only: the parity that matters is checked when the planned model is saved, with the user's --atol
            export_onnx(m, inputs, path, OnnxConfig(dynamic_batch=False), strict=False)
        bench = dataclasses.replace(config.bench(), batch_sizes=(inputs[0].shape[0],), runs=max(config.runs, 30))
        return [timing.latency[0].p50 for timing in benchmark_onnx(paths, bench).models]


def _price(candidate: Candidate, lam: float) -> float:
    return candidate.output_error**2 + lam * candidate.latency_ms


def _search(rows: list[AutoLayer], budget_ms: float) -> tuple[list[int], list[list[float]]]:
    """Per layer, the candidate index of the least-error plan within `budget_ms` of conv time (else the
    fastest plan), and the frontier of plans a Lagrangian sweep visits: [conv ms, sqrt(sum error^2)].

    The choice is a multiple-choice knapsack solved by dynamic programming over latency in BINS steps of
    the budget (each latency rounded to the nearest step: far finer than the timing noise); the Lagrangian
    sweep only reaches the convex hull of the plans and draws the frontier.
    """

    def pick(lam: float) -> list[int]:
        return [min(range(len(r.candidates)), key=lambda j, r=r: _price(r.candidates[j], lam)) for r in rows]

    def cost(choice: list[int]) -> tuple[float, float]:
        ms = sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True))
        error = math.sqrt(sum(r.candidates[j].output_error ** 2 for r, j in zip(rows, choice, strict=True)))
        return ms, error

    fastest = [min(range(len(r.candidates)), key=lambda j, r=r: r.candidates[j].latency_ms) for r in rows]
    best = _knapsack(rows, budget_ms) if cost(fastest)[0] <= budget_ms else None
    frontier = sorted({cost(pick(10 ** (e / 4))) for e in range(-48, 25)} | {cost(fastest)})
    return best or fastest, [[ms, error] for ms, error in frontier]  # fastest: out of reach, the caller says so


def _knapsack(rows: list[AutoLayer], budget_ms: float) -> list[int] | None:
    """The least sum of output_error^2 with the latencies' sum within the budget: dynamic programming
    over latency in steps of budget / BINS (rounded to the nearest step, with room for the rounding; of the
    resulting plans, the best whose true sum fits is taken)."""
    if budget_ms <= 0:
        return None
    step = budget_ms / BINS
    size = BINS + len(rows) + 1  # each rounding adds at most half a step
    least = np.full(size, np.inf)  # least[b]: the least error of the layers so far using b steps
    least[0] = 0.0
    picks = []
    for r in rows:
        new, pick = np.full(size, np.inf), np.zeros(size, dtype=np.int64)
        for j, c in enumerate(r.candidates):
            n = round(c.latency_ms / step)
            if n >= size:
                continue
            shifted = np.full(size, np.inf)
            shifted[n:] = least[: size - n] + c.output_error**2
            better = shifted < new
            new[better], pick[better] = shifted[better], j
        least = new
        picks.append(pick)
    for end in np.argsort(least, kind="stable"):
        if not np.isfinite(least[end]):
            return None
        b, choice = int(end), []
        for r, pick in zip(reversed(rows), reversed(picks), strict=True):
            choice.append(int(pick[b]))
            b -= round(r.candidates[choice[-1]].latency_ms / step)
        choice.reverse()
        if sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True)) <= budget_ms * (1 + 1e-12):
            return choice
    return None
