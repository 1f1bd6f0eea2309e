"""Latency of one conv layer, as it is or factorized, and of whole models, measured on the planned runtime (ONNX
Runtime, or PyTorch itself) and cached on disk.

Each candidate becomes a model of that one layer at its real input shape: on ONNX Runtime a small ONNX file,
timed with the same harness, provider and options as the end-to-end benchmark (`bench.benchmark_onnx`); on the
PyTorch runtime the module itself, timed by `torch_bench.benchmark_torch` with the same device, compile, dtype
and memory format as the end-to-end benchmark. The candidates of a layer alternate run by run. A measurement is
stored under a key made of everything it depends on: the layer's shape and hyper-parameters, the candidate's
form, the runtime and its settings (provider and options, or torch version, compile, dtype, channels-last), the
thread count, the runtime's version and the device name. A second run, or another model with the same layer
shapes, reads it back instead of measuring again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import onnxruntime as ort
import torch
from torch import fx, nn

from convert.report.schema import Benchmark
from convert.runtime.bench import benchmark_onnx
from convert.runtime.config import BenchConfig
from convert.runtime.devices import device_name, resolve_device
from convert.runtime.export import OnnxConfig, export_onnx
from convert.runtime.quantize import Int8Format, quantize_for_timing
from convert.runtime.sessions import CUDA_OPTIONS, default_threads
from convert.runtime.torch_bench import benchmark_torch
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
    """Median latency (ms) of the layer under each plan (None: the conv as it is), from the cache or measured on
    `config`'s runtime; on ONNX Runtime as one-layer models quantized in `quantize` when given, else in float.

    Raises:
        ConvertError: when the device cannot run here.
    """
    config = _resolved(config, batch=layer.input_shape[0])
    runtime = _runtime(config, quantize)
    keys = [_key(layer, plan, runtime) for plan in plans]
    found = [cache.get(key) for key in keys]
    missing = [i for i, ms in enumerate(found) if ms is None]
    cache.hits += len(plans) - len(missing)
    if missing:
        timing = _time_layer(layer, [plans[i] for i in missing], config, progress, quantize)
        for i, model in zip(missing, timing.models, strict=True):
            found[i] = model.latency[0].p50
            cache.put(keys[i], model.latency[0].p50, {"layer": _describe(layer), "plan": _plan(plans[i]), **runtime})
        cache.measured += len(missing)
    return [float(ms) for ms in found]


def _time_layer(
    layer: LayerShape,
    plans: Sequence[LayerPlan | None],
    config: BenchConfig,
    progress: Callable[[str, float], None] | None,
    quantize: Int8Format | None,
) -> Benchmark:
    """The layer under each plan, timed side by side on `config`'s runtime (quantized in `quantize` when given)."""
    if config.runtime == "torch":
        modules = [layer_module(layer, plan) for plan in plans]
        return benchmark_torch(modules, torch.randn(layer.input_shape), config, progress=progress)
    with tempfile.TemporaryDirectory(prefix="convert-latency-") as folder:
        paths = [
            _layer_onnx(layer, plan, Path(folder) / f"candidate{i}.onnx", quantize) for i, plan in enumerate(plans)
        ]
        return benchmark_onnx(paths, config, progress=progress)


def measure_models(
    models: Sequence[nn.Module],
    inputs: tuple[torch.Tensor, ...],
    config: BenchConfig,
    cache: LatencyCache,
    formats: Sequence[Int8Format | None] | None = None,
) -> list[float]:
    """Median end-to-end latency (ms) of each model at the inputs' batch, from the cache or measured side by side on
    `config`'s runtime (on ONNX Runtime: exported with static shapes, and quantized in `formats[i]` where given).
    The key is the model's content (the ONNX file's graph and weights, an INT8 file's format and ranges included;
    on PyTorch, the modules' structure, graph code and weights) and the runtime, so a second plan of the same model
    times nothing and plans the same."""
    config = _resolved(config, batch=int(inputs[0].shape[0]))
    runtime = _runtime(config, None)
    formats = list(formats or [None] * len(models))
    with tempfile.TemporaryDirectory(prefix="convert-auto-") as folder:
        if config.runtime == "torch":
            keys = [_module_key(model, inputs, runtime) for model in models]
        else:
            exported: dict[int, Path] = {}  # each model exported once, whatever formats it is timed in
            paths = []
            for model, fmt in zip(models, formats, strict=True):
                if id(model) not in exported:
                    exported[id(model)] = Path(folder) / f"model{len(exported)}.onnx"
                    # timing only: the parity that matters is checked when the planned model is saved, with the
                    # user's atol
                    export_onnx(model, inputs, exported[id(model)], OnnxConfig(dynamic_batch=False), strict=False)
                path = exported[id(model)]
                paths.append(path if fmt is None else quantize_for_timing(path, _int8_path(path, fmt), fmt))
            keys = [_file_key(path, runtime) for path in paths]
        found = [cache.get(key) for key in keys]
        missing = [i for i, ms in enumerate(found) if ms is None]
        cache.hits += len(models) - len(missing)
        if missing:
            if config.runtime == "torch":
                timing = benchmark_torch([models[i] for i in missing], inputs, config)
            else:
                timing = benchmark_onnx([paths[i] for i in missing], config)
            for i, model in zip(missing, timing.models, strict=True):
                found[i] = model.latency[0].p50
                name = f"model{i}" if config.runtime == "torch" else paths[i].name
                cache.put(keys[i], found[i], {"model": name, **runtime})
            cache.measured += len(missing)
    return [float(ms) for ms in found]


def _int8_path(path: Path, fmt: Int8Format) -> Path:
    return path.with_name(f"{path.stem}.{fmt.name}.onnx")


def _resolved(config: BenchConfig, batch: int) -> BenchConfig:
    """`config` at one batch size, its device resolved (auto: where the runtime really runs here).

    Raises:
        ConvertError: when the device cannot run here.
    """
    device = resolve_device(config.device)
    where = device.torch_device.type if config.runtime == "torch" else device.require_provider()
    return dataclasses.replace(config, device=where, batch_sizes=(batch,))


def _file_key(path: Path, runtime: dict) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([CACHE_VERSION, digest, runtime], sort_keys=True).encode()).hexdigest()[:32]


def _module_key(model: nn.Module, inputs: tuple[torch.Tensor, ...], runtime: dict) -> str:
    """A module's content (its modules as they print, the code of its fx graphs, every state tensor) with the
    inputs' shapes and dtypes and the runtime."""
    digest = hashlib.sha256(repr(model).encode())
    for module in model.modules():
        if isinstance(module, fx.GraphModule):
            digest.update(module.code.encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    shapes = [[list(t.shape), str(t.dtype)] for t in inputs]
    text = json.dumps([CACHE_VERSION, digest.hexdigest(), shapes, runtime], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _runtime(config: BenchConfig, quantize: Int8Format | None) -> dict:
    """Everything about the runtime that a latency depends on (`config.device` resolved), the INT8 format of the
    one-layer models too when there is one (keys of float measurements are as they were before INT8 planning)."""
    if quantize is not None:
        return {**_runtime(config, None), "quantize": dataclasses.asdict(quantize)}
    if config.runtime == "torch":
        device = torch.device(config.device)
        return {
            "runtime": "torch",
            "torch": torch.__version__,
            "device_name": device_name(device),
            "threads": config.threads or default_threads() if device.type == "cpu" else None,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "compile": config.compile,
            "dtype": config.dtype,
            "channels_last": config.channels_last,
            "runs": config.runs,
        }
    if config.device == "cpu":
        return {
            "provider": "CPUExecutionProvider",
            "threads": config.threads or default_threads(),
            "device_name": device_name(torch.device("cpu")),
            "ort": ort.__version__,
            "runs": config.runs,
        }
    return {
        "provider": f"{config.device}",
        "options": CUDA_OPTIONS,
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "?",
        "ort": ort.__version__,
        "runs": config.runs,
    }


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
