"""Calibration: fit each converted layer's factors to real inputs, layer by layer in execution order (`fit.py`).

On the converted model (the copy that will be returned), in eval mode: every converted layer starts as the original
conv; then, in the order the layers first run, each one's inputs in the model converted so far (z) and in the
original model (x) are recorded at every call site over the calibration batches (each forward pass stops at the
layer's last call), its factors are fitted so that it maps z to the original conv's output on x, and its replacement
takes its place. A layer thus corrects the error that reaches it from the layers before, and error does not pile up
through depth. A shared conv sees the inputs of all its call sites. The original model's inputs do not depend on the
calibration: one pass records them for as many of the next layers as fit in AHEAD_BYTES. Memory: those, one layer's
inputs in the converted model over the calibration batches, and Gram matrices; cost: a forward pass of the converted
model up to each layer, and of the original up to each group of layers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from convert.common import Inputs, Progress, as_inputs, no_progress
from convert.errors import ConvertError, one_line
from convert.report.schema import CalibrationReport
from convert.surgery.find import ConvLayer
from convert.surgery.fit import Fit, fit_layer
from convert.surgery.plan import LayerPlan
from convert.surgery.rewrite import set_factors, swap_module
from convert.surgery.verify import run_model, tensors_of

if TYPE_CHECKING:
    from convert.surgery.analysis import Analysis

__all__ = [
    "AHEAD_BYTES",
    "Calibration",
    "CalibrationConfig",
    "Calibrated",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SAMPLES",
    "calibrate",
    "layer_inputs",
    "prepare_calibration",
]

DEFAULT_SAMPLES = 256  # a few hundred unlabeled inputs are enough: the fit has few unknowns per output channel
DEFAULT_BATCH_SIZE = 32
AHEAD_BYTES = 1 << 30  # the original model's inputs to the layers to come, recorded in one pass: about 1 GiB at most


@dataclasses.dataclass(frozen=True, eq=False)
class CalibrationConfig:
    """Unlabeled inputs to fit the factors to (calibrated conversion), and how many of them to use."""

    # A tensor (N, ...) per model input (one tensor for one input), a torch Dataset of samples, or any source
    # `convert.load_data` takes: a folder of images, a tensor file, "synthetic".
    data: Any
    samples: int = DEFAULT_SAMPLES  # at most this many inputs (a seeded random choice of a larger source)
    batch_size: int = DEFAULT_BATCH_SIZE  # inputs per forward pass
    seed: int = 0  # for the choice of inputs, and synthetic ones
    description: str | None = None  # what `data` is, for the report (None: said by the source)
    # PIL image -> (C, H, W) tensor for a folder of images (None: `convert.distill.data.image_transform`'s default)
    transform: Callable[[Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        for name in ("samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConvertError(f"`{name}`={value} is not valid: use a positive integer, e.g. {DEFAULT_SAMPLES}")
        if self.seed < 0:
            raise ConvertError(f"`seed`={self.seed} is not valid: use 0 or a positive integer")


@dataclasses.dataclass
class Calibration:
    """Calibration inputs, checked and held in batches (what `calibrate` and the planners read)."""

    batches: list[tuple[torch.Tensor, ...]]
    description: str  # what they are
    synthetic: bool  # random inputs, not real data
    config: CalibrationConfig

    @property
    def samples(self) -> int:
        return sum(int(batch[0].shape[0]) for batch in self.batches)


@dataclasses.dataclass
class Calibrated:
    """What calibration did: per converted layer its fit, and the record for the report."""

    fits: dict[str, Fit]
    report: CalibrationReport


def prepare_calibration(calibration: CalibrationConfig | Any, model: nn.Module, example_inputs: Inputs) -> Calibration:
    """Load (if need be), choose and check the calibration inputs, before any other work.

    Raises:
        ConvertError: for inputs the model cannot take (shape, dtype), NaN or infinite values, a source that
            cannot be read.
    """
    # the sources distillation reads, and their checks (imported on use: convert.distill imports the surgery)
    from convert.distill.data import input_names, load_inputs

    config = calibration if isinstance(calibration, CalibrationConfig) else CalibrationConfig(calibration)
    examples = as_inputs(example_inputs)
    if isinstance(config.data, Dataset):
        dataset, size, description = config.data, len(config.data), config.description or "a dataset of inputs"
    else:
        source = load_inputs(
            config.data, examples, input_names=input_names(model), transform=config.transform, seed=config.seed
        )
        dataset, size, description = source.dataset, source.size, config.description or source.description
    count = config.samples if size is None else min(size, config.samples)
    if size is None or size <= config.samples:
        indices = list(range(count))
    else:  # a random choice: a folder of images is sorted by class
        order = torch.randperm(size, generator=torch.Generator().manual_seed(config.seed))
        indices = sorted(order[:count].tolist())
    try:
        tensors = tuple(default_collate([dataset[i] for i in indices]))
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConvertError(f"cannot stack the calibration inputs ({one_line(e)}): give inputs of one shape") from e
    # the same checks for every source: shapes and dtypes against the example inputs, finite values
    tensors = load_inputs(list(tensors), examples).dataset.tensors
    chosen = f"{count} of {description}" if size is not None and size > count else description
    batches = [tuple(t[i : i + config.batch_size] for t in tensors) for i in range(0, count, config.batch_size)]
    return Calibration(batches, chosen, size is None, config)


def calibrate(
    analysis: Analysis,
    model: nn.Module,
    layers: Sequence[tuple[ConvLayer, LayerPlan, str, nn.Module]],
    calibration: Calibration,
    progress: Progress = no_progress,
) -> Calibrated:
    """Fit the converted layers of `model` (the rewritten copy of `analysis.model`) to the calibration inputs.

    Args:
        analysis: the analysis the model was rewritten from (its original model is the reference).
        model: the converted model; its replacements' weights are fitted in place, nothing else changes.
        layers: per converted layer: the layer, its plan, the path of its replacement in `model`, and the module
            that computes the original conv there until the layer is calibrated (the conv itself, or a copy).
        calibration: from `prepare_calibration`.
        progress: called with (what, fraction) per layer.
    """
    from convert.surgery.analysis import functional_as_modules  # analysis calls this module: imported on use

    start = time.perf_counter()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = [tuple(t.to(device) for t in batch) for batch in calibration.batches]
    functional = {layer.name for layer, *_ in layers if layer.module_path is None}
    original, convs = functional_as_modules(analysis, functional)
    reference = {
        layer.name: convs.get(layer.name) if layer.module_path is None else original.get_submodule(layer.module_path)
        for layer, *_ in layers
    }
    svd_error = _output_error(original, model, batches)
    replacements = {layer.name: model.get_submodule(path) for layer, _, path, _ in layers}
    for _, _, path, standin in layers:
        swap_module(model, path, standin)
    calls = _calls(model, {layer.name: standin for layer, _, _, standin in layers}, batches[0])
    fits, notes = {}, []
    ordered = sorted(layers, key=lambda item: calls[item[0].name][0])
    ahead = _Ahead(original, [(layer, reference[layer.name], calls[layer.name][1]) for layer, *_ in ordered], batches)
    for index, (layer, plan, path, standin) in enumerate(ordered):
        progress(f"calibrating {layer.name}", index / len(ordered))
        count = calls[layer.name][1]
        if count == 0 or reference[layer.name] is None:
            why = "is not called on the calibration inputs" if count == 0 else "has no conv to read in the original"
            notes.append(f"{layer.name} {why}: its SVD factors are kept")
        else:
            z = layer_inputs(model, standin, count, batches)
            x = ahead.take(layer.name)
            pairs = [pair for zs, xs in zip(z, x, strict=True) for pair in zip(zs, xs, strict=False)]
            fit = fit_layer(layer, plan, pairs)
            if fit.factors is not None:
                set_factors(replacements[layer.name], layer.spec, fit.factors, fit.bias)
            fits[layer.name] = fit
            del z, x, pairs
        swap_module(model, path, replacements[layer.name])
    progress("calibrated", 1.0)
    report = CalibrationReport(
        data=calibration.description,
        samples=calibration.samples,
        batch_size=calibration.config.batch_size,
        synthetic=calibration.synthetic,
        seconds=round(time.perf_counter() - start, 4),
        calibrated=sum(fit.factors is not None for fit in fits.values()),
        kept=len(layers) - sum(fit.factors is not None for fit in fits.values()),
        output_rel_error=_output_error(original, model, batches),
        svd_output_rel_error=svd_error,
        notes=notes + (["synthetic inputs: the factors fit random inputs, not real data"] * calibration.synthetic),
    )
    return Calibrated(fits, report)


class _Stop(BaseException):
    """Raised by a hook to end a forward pass once what it ran for is recorded (not an Exception: the model's own
    `except Exception` does not catch it)."""


def layer_inputs(
    model: nn.Module, module: nn.Module, calls: int, batches: Sequence[tuple[torch.Tensor, ...]]
) -> list[list[torch.Tensor]]:
    """Per batch, the input of `module` at each of its first `calls` calls in an eval-mode forward pass of `model`,
    which stops there."""
    recorded: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        recorded.append(args[0].detach())
        if len(recorded) >= calls:
            raise _Stop

    handle = module.register_forward_pre_hook(record)
    per_batch = []
    try:
        for batch in batches:
            try:
                run_model(model, batch, training=False)
            except _Stop:
                pass
            per_batch.append(list(recorded))
            recorded.clear()
    finally:
        handle.remove()
    return per_batch


class _Ahead:
    """The original model's inputs to the layers to come, recorded for as many of them per forward pass as fit in
    AHEAD_BYTES (they do not depend on the calibration, unlike the converted model's): fewer passes of the original."""

    def __init__(
        self,
        original: nn.Module,
        layers: Sequence[tuple[ConvLayer, nn.Module | None, int]],
        batches: Sequence[tuple[torch.Tensor, ...]],
    ) -> None:
        self.layers = [(layer, module, count) for layer, module, count in layers if module is not None and count]
        self.original, self.batches = original, batches
        self.samples = sum(int(batch[0].shape[0]) for batch in batches)
        self.cache: dict[str, list[list[torch.Tensor]]] = {}

    def take(self, name: str) -> list[list[torch.Tensor]]:
        """Per batch, the input of layer `name` at each of its calls in the original model."""
        if name not in self.cache:
            start = next(i for i, (layer, _, _) in enumerate(self.layers) if layer.name == name)
            chosen, size = [], 0
            for layer, module, count in self.layers[start:]:  # the next layers, while they fit (at least one)
                per_sample = sum(math.prod(shape[1:]) for shape in layer.in_shapes[:count]) or 1
                size += per_sample * layer.weight.element_size() * self.samples
                if chosen and size > AHEAD_BYTES:
                    break
                chosen.append((layer.name, module, count))
            self.cache.update(_record(self.original, chosen, self.batches))
        return self.cache.pop(name)


def _record(
    model: nn.Module, layers: Sequence[tuple[str, nn.Module, int]], batches: Sequence[tuple[torch.Tensor, ...]]
) -> dict[str, list[list[torch.Tensor]]]:
    """Per layer name, per batch: the input of its module at each of its first `count` calls in an eval-mode forward
    pass of `model`, which stops once every layer has them all."""
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in layers}
    counts = {name: count for name, _, count in layers}
    missing = [0]

    def record(_module: nn.Module, args: tuple[Any, ...], name: str) -> None:
        if len(recorded[name]) < counts[name]:
            recorded[name].append(args[0].detach())
            missing[0] -= 1
            if missing[0] == 0:
                raise _Stop

    handles = [module.register_forward_pre_hook(partial(record, name=name)) for name, module, _ in layers]
    per_batch: dict[str, list[list[torch.Tensor]]] = {name: [] for name, _, _ in layers}
    try:
        for batch in batches:
            missing[0] = sum(counts.values())
            try:
                run_model(model, batch, training=False)
            except _Stop:
                pass
            for name, inputs in recorded.items():
                per_batch[name].append(list(inputs))
                inputs.clear()
    finally:
        for handle in handles:
            handle.remove()
    return per_batch


def _calls(model: nn.Module, modules: Mapping[str, nn.Module], batch: tuple[torch.Tensor, ...]) -> dict[str, tuple]:
    """Per layer name: (when its module is first called in a forward pass of `model` on `batch`, how many times)."""
    seen: dict[str, list[int]] = {name: [] for name in modules}
    clock = iter(range(1 << 62))
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: seen[name].append(next(clock)))
        for name, module in modules.items()
    ]
    try:
        run_model(model, batch, training=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (times[0] if times else 1 << 62, len(times)) for name, times in seen.items()}


def _output_error(reference: nn.Module, model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]]) -> float:
    """||model(b) - reference(b)|| / ||reference(b)|| over all output tensors of all batches, in eval mode."""
    squared = norm = 0.0
    for batch in batches:
        expected = tensors_of(run_model(reference, batch, training=False))
        got = tensors_of(run_model(model, batch, training=False))
        for a, b in zip(expected, got, strict=True):
            squared += float((b.double() - a.double()).square().sum())
            norm += float(a.double().square().sum())
    return (squared / norm) ** 0.5 if norm > 0 else squared**0.5
