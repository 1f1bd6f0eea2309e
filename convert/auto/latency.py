"""Latency of one conv layer, as it is or factorized, measured on ONNX Runtime and cached on disk.

Each candidate becomes a small ONNX model of that one layer at its real input shape (quantized to INT8 when the
plan is for an INT8 runtime), timed with the same harness, provider and options as the end-to-end benchmark
(`bench.benchmark_onnx`), the candidates of a layer alternating run by run. A measurement is stored under a key
made of everything it depends on: the layer's shape and hyper-parameters, the candidate's form, the INT8 format,
the provider and its options, the thread count, the ONNX Runtime version and the device name. A second run, or
another model with the same layer shapes, reads it back instead of measuring again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

from convert.runtime.bench import BenchConfig, benchmark_onnx
from convert.runtime.devices import resolve_device
from convert.runtime.quantize import Int8Format, quantize_for_timing
from convert.runtime.sessions import CUDA_OPTIONS, default_threads
from convert.surgery.factorize import Factors
from convert.surgery.find import ConvSpec
from convert.surgery.plan import LayerPlan
from convert.surgery.rewrite import build_replacement, plain_conv

__all__ = ["CACHE_VERSION", "LatencyCache", "layer_module", "LayerShape", "measure_layer", "measure_models"]

CACHE_VERSION = 1  # bump when what a measurement means changes


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """A conv layer where it runs: its hyper-parameters, input shape and bias."""

    spec: ConvSpec
    input_shape: tuple[int, ...]
    bias: bool


@dataclasses.dataclass
class LatencyCache:
    """Measurements on disk, one small JSON file per key (concurrent runs never rewrite each other's files)."""

    folder: Path
    hits: int = 0
    measured: int = 0

    @classmethod
    def default(cls) -> LatencyCache:
        """$CONVERT_CACHE_DIR, else $XDG_CACHE_HOME/convert/latency, else ~/.cache/convert/latency."""
        root = os.environ.get("CONVERT_CACHE_DIR")
        if root:
            return cls(Path(root))
        return cls(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convert" / "latency")

    def get(self, key: str) -> float | None:
        try:
            return float(json.loads((self.folder / f"{key}.json").read_text())["ms"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or unreadable: measure again

    def put(self, key: str, ms: float, what: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.folder, suffix=".tmp", delete=False) as f:
            json.dump({"ms": ms, "what": what}, f)
        os.replace(f.name, self.folder / f"{key}.json")


def measure_layer(
    layer: LayerShape,
    plans: Sequence[LayerPlan | None],
    config: BenchConfig,
    cache: LatencyCache,
    progress: Callable[[str, float], None] | None = None,
    quantize: Int8Format | None = None,
) -> list[float]:
    """Median latency (ms) of the layer under each plan (None: the conv as it is), from the cache or measured;
    as one-layer models quantized in `quantize` when given, else in float.

    Raises:
        ConvertError: when the device cannot run here.
    """
    device = resolve_device(config.device).require_provider()
    runtime = _runtime(device, config, quantize)
    keys = [_key(layer, plan, runtime) for plan in plans]
    found = [cache.get(key) for key in keys]
    missing = [i for i, ms in enumerate(found) if ms is None]
    cache.hits += len(plans) - len(missing)
    if missing:
        with tempfile.TemporaryDirectory(prefix="convert-latency-") as folder:
            paths = [_layer_onnx(layer, plans[i], Path(folder) / f"candidate{i}.onnx", quantize) for i in missing]
            timing = benchmark_onnx(
                paths,
                dataclasses.replace(config, device=device, batch_sizes=(layer.input_shape[0],)),
                progress=progress,
            )
        for i, model in zip(missing, timing.models, strict=True):
            found[i] = model.latency[0].p50
            cache.put(keys[i], model.latency[0].p50, {"layer": _describe(layer), "plan": _plan(plans[i]), **runtime})
        cache.measured += len(missing)
    return [float(ms) for ms in found]


def measure_models(paths: Sequence[Path], config: BenchConfig, cache: LatencyCache) -> list[float]:
    """Median end-to-end latency (ms) of each ONNX file at its static batch, from the cache or measured side by
    side. The key is the file's content (graph and weights; an INT8 file's formats and ranges) and the runtime,
    so a second plan of the same model times nothing and plans the same."""
    device = resolve_device(config.device).require_provider()
    runtime = _runtime(device, config, None)
    keys = [_file_key(path, runtime) for path in paths]
    found = [cache.get(key) for key in keys]
    missing = [i for i, ms in enumerate(found) if ms is None]
    cache.hits += len(paths) - len(missing)
    if missing:
        timing = benchmark_onnx([paths[i] for i in missing], dataclasses.replace(config, device=device))
        for i, model in zip(missing, timing.models, strict=True):
            found[i] = model.latency[0].p50
            cache.put(keys[i], found[i], {"model": Path(paths[i]).name, **runtime})
        cache.measured += len(missing)
    return [float(ms) for ms in found]


def _file_key(path: Path, runtime: dict) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([CACHE_VERSION, digest, runtime], sort_keys=True).encode()).hexdigest()[:32]


def _runtime(device: str, config: BenchConfig, quantize: Int8Format | None) -> dict:
    """Everything about the runtime that a latency depends on (the INT8 format too, when there is one: keys of
    float measurements are as they were before INT8 planning existed)."""
    if quantize is not None:
        return {**_runtime(device, config, None), "quantize": dataclasses.asdict(quantize)}
    if device == "cpu":
        return {
            "provider": "CPUExecutionProvider",
            "threads": config.threads or default_threads(),
            "device_name": _cpu_name(),
            "ort": ort.__version__,
            "runs": config.runs,
        }
    return {
        "provider": f"{device}",
        "options": CUDA_OPTIONS,
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "?",
        "ort": ort.__version__,
        "runs": config.runs,
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def _describe(layer: LayerShape) -> dict:
    return {"spec": dataclasses.asdict(layer.spec), "input_shape": list(layer.input_shape), "bias": layer.bias}


def _plan(plan: LayerPlan | None) -> dict | None:
    return None if plan is None else {"groups": plan.groups, "rank": plan.rank, "pointwise": plan.pointwise}


def _key(layer: LayerShape, plan: LayerPlan | None, runtime: dict) -> str:
    text = json.dumps([CACHE_VERSION, _describe(layer), _plan(plan), runtime], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def layer_module(layer: LayerShape, plan: LayerPlan | None) -> nn.Module:
    """The layer as it is (`plan` None) or as `plan` rewrites it, with random weights of the right shapes."""
    spec = layer.spec
    weight = torch.randn(spec.out_channels, spec.in_channels // spec.groups, *spec.kernel)
    conv = plain_conv(spec, weight, torch.randn(spec.out_channels) if layer.bias else None)
    if plan is None:
        return conv.eval()
    width = plan.groups * plan.rank
    first = torch.randn(width, spec.in_channels // plan.groups, *spec.kernel)
    pointwise = torch.randn(spec.out_channels, width, *([1] * spec.dim)) if plan.pointwise else None
    return build_replacement(spec, Factors(first, pointwise, 0.0), conv.bias, False, False).eval()


def _layer_onnx(layer: LayerShape, plan: LayerPlan | None, path: Path, quantize: Int8Format | None) -> Path:
    """A one-layer ONNX model with a static input shape (the TorchScript exporter: ~50x faster than dynamo
    for a graph this small, and the graph is the same Conv nodes), quantized in `quantize` when given."""
    module = layer_module(layer, plan)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(layer.input_shape),), str(path), dynamo=False, input_names=["x"], output_names=["y"]
        )
    if quantize is None:
        return path
    return quantize_for_timing(path, path.with_name(f"{path.stem}.{quantize.name}.onnx"), quantize)
