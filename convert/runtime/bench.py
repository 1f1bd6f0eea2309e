"""Benchmark ONNX models side by side on ONNX Runtime (CUDA provider on a GPU, CPU provider otherwise), and a
conversion on the runtime its BenchConfig names (ONNX Runtime, or PyTorch itself: `convert.runtime.torch_bench`).

The harness and statistics are `convert.runtime.timing`'s. Inputs and outputs are bound on the device (IO
binding) so host-device copies are not timed. On CPU the models share one intra-op thread pool (see
`convert.runtime.sessions`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from convert.artifacts import CONVERTED_INT8_ONNX, CONVERTED_ONNX, ORIGINAL_INT8_ONNX, ORIGINAL_ONNX
from convert.common import Progress
from convert.conversion import Conversion
from convert.errors import ConvertError
from convert.report.noise import noise_notes
from convert.report.schema import Benchmark, ModelTiming
from convert.runtime.config import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP, BenchConfig
from convert.runtime.devices import Device, resolve_device
from convert.runtime.sessions import OpenSession, open_on, random_input, static_batch_message, validate_onnx_file
from convert.runtime.timing import rss_bytes, speedups, time_batches
from convert.runtime.torch_bench import benchmark_torch

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "BenchConfig",
    "benchmark_conversion",
    "benchmark_onnx",
    "identity_model",
]

logger = logging.getLogger(__name__)


def benchmark_onnx(
    paths: Sequence[str | os.PathLike[str]],
    config: BenchConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    macs: Sequence[int | None] | None = None,
    progress: Progress | None = None,
) -> Benchmark:
    """Time ONNX models side by side at each batch size; speedups are relative to the first model.

    Args:
        paths: .onnx files; each needs a dynamic batch dimension or the static batch of every batch size.
        config: device, threads, warm-up, runs or duration, batch sizes (runtime "ort").
        names: a name per model (default: the file names).
        macs: multiply-accumulates per model (at any one batch size), for the MAC ratio beside each speedup.
        progress: called with (what is running, fraction done).

    Raises:
        ConvertError: for a bad file, a device that cannot run here, or a batch size a model rejects.

    Example:
        >>> result = benchmark_onnx(["original.onnx", "model.onnx"], BenchConfig(device="cpu", batch_sizes=(1, 8)))
        >>> [(s.batch, s.speedup) for s in result.speedup]
    """
    config = config or BenchConfig()
    if config.runtime != "ort":
        raise ConvertError("ONNX files run on ONNX Runtime: use `runtime`=ort (benchmark_torch times PyTorch modules)")
    if not paths:
        raise ConvertError("no ONNX files to benchmark: give one or more .onnx files")
    names = list(names or [Path(p).name for p in paths])
    notify = progress or (lambda _what, _fraction: None)
    for path in paths:  # every file and batch size, before any time is spent
        _check_batch_sizes(validate_onnx_file(path), path, config.batch_sizes)
    device = resolve_device(config.device)
    if device.name == "auto" and device.provider == "cpu":
        logger.warning("benchmarking on the CPU: %s", device.reason.removeprefix("auto chose the CPU: "))
    device.require_provider()
    _warm_runtime(config)
    models: list[ModelTiming] = []
    sessions: list[OpenSession] = []
    for path, name in zip(paths, names, strict=True):
        notify(f"loading {name}", 0.0)
        rss, gpu = rss_bytes(), _gpu_free_bytes(device)
        opened = open_on(path, device, config.threads, shared_pool=True)
        if sessions and opened.device != sessions[0].device:
            raise ConvertError(f"{name} runs on {opened.device}, {names[0]} on {sessions[0].device}: not comparable")
        # the next models go where the first one went
        device = dataclasses.replace(device, provider=opened.device, reason=opened.reason)
        for batch in config.batch_sizes:  # warm at every batch size, so memory arenas reach their size
            _runner(opened, batch, path)()
        used_gpu = None if gpu is None else max(0, gpu - (_gpu_free_bytes(device) or 0))
        models.append(ModelTiming(name, str(path), [], max(0, rss_bytes() - rss), used_gpu))
        sessions.append(opened)
    time_batches(models, lambda b: [_runner(s, b, p) for s, p in zip(sessions, paths, strict=True)], config, notify)
    first = sessions[0]
    notes = [note for s in sessions for note in s.notes]
    options = {k: {o: str(v) for o, v in opts.items()} for k, opts in first.session.get_provider_options().items()}
    if options.get("CUDAExecutionProvider", {}).get("use_tf32") == "1":
        notes.append("use_tf32=1: on Ampere and newer GPUs fp32 convs run in TF32, not true fp32")
    return Benchmark(
        device=first.device,
        requested_device=config.device,
        reason=first.reason,
        providers=first.session.get_providers(),
        provider_options=options,
        ort_version=ort.__version__,
        threads=first.threads,
        warmup=config.warmup,
        runs=None if config.duration is not None else config.runs,
        duration=config.duration,
        batch_sizes=list(config.batch_sizes),
        models=models,
        speedup=speedups(models, macs),
        notes=[*dict.fromkeys(notes), *noise_notes(models)],
    )


def _runner(opened: OpenSession, batch: int, path: str | os.PathLike[str]) -> Callable[[], None]:
    """A zero-argument function that runs the session once on random inputs bound on its device."""
    session = opened.session
    device = "cpu" if opened.device == "cpu" else "cuda"
    binding = session.io_binding()
    rng = np.random.default_rng(batch)
    for arg in session.get_inputs():
        value = random_input(arg, batch, rng, path)
        binding.bind_ortvalue_input(arg.name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device, 0)
    binding.synchronize_inputs()

    def run() -> None:
        session.run_with_iobinding(binding)  # returns after the device has finished (ORT synchronizes)

    return run


def _check_batch_sizes(proto: onnx.ModelProto, path: object, batch_sizes: Sequence[int]) -> None:
    weights = {t.name for t in proto.graph.initializer}
    for arg in proto.graph.input:
        dims = arg.type.tensor_type.shape.dim
        if arg.name in weights or not dims or not dims[0].HasField("dim_value"):
            continue
        static = dims[0].dim_value
        if any(b != static for b in batch_sizes):
            raise ConvertError(
                static_batch_message(path, arg.name, static, next(b for b in batch_sizes if b != static))
            )


def _warm_runtime(config: BenchConfig) -> None:
    """Start ONNX Runtime (environment, thread pool) on a tiny model, so that the first model's memory growth
    is its own."""
    with tempfile.TemporaryDirectory() as folder:
        path = identity_model(Path(folder) / "identity.onnx")
        _runner(open_on(path, resolve_device("cpu"), config.threads, shared_pool=True), 1, path)()


def identity_model(path: str | os.PathLike[str], size: int = 1) -> Path:
    """Write an ONNX model whose output is its input (shape (batch, size)): times the harness itself."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", size])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", size])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    onnx.save(model, path)
    return Path(path)


def _gpu_free_bytes(device: Device) -> int | None:
    if device.provider == "cpu":
        return None
    try:
        return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - memory is reported where available
        return None


def benchmark_conversion(
    conversion: Conversion,
    folder: str | os.PathLike[str],
    config: BenchConfig | None = None,
    progress: Progress | None = None,
) -> Benchmark:
    """Time the original and the converted model side by side, and record it as `conversion.report.benchmark`:
    on ONNX Runtime, their ONNX files in `folder` (from `export_conversion`), with their INT8 files after each when
    the conversion was quantized (`quantize_conversion`); on the PyTorch runtime, the modules themselves (`folder`
    is not read). Speedups are over the original float model."""
    config = config or BenchConfig()
    totals = conversion.report.totals
    names, macs = ["original", "converted"], [totals.macs_before, totals.macs_after]
    if config.runtime == "torch":
        models = [conversion.original, conversion.model]
        benchmark = benchmark_torch(models, conversion.inputs, config, names=names, macs=macs, progress=progress)
    else:
        folder = Path(folder)
        files = [ORIGINAL_ONNX, CONVERTED_ONNX]
        if conversion.report.quantize is not None:  # no MAC ratio for INT8: a MAC is not the float one's cost
            files = [ORIGINAL_ONNX, ORIGINAL_INT8_ONNX, CONVERTED_ONNX, CONVERTED_INT8_ONNX]
            names = ["original", "original int8", "converted", "converted int8"]
            macs = [totals.macs_before, None, totals.macs_after, None]
        benchmark = benchmark_onnx([folder / name for name in files], config, names=names, macs=macs, progress=progress)
        for timing in benchmark.models:
            timing.path = Path(timing.path).name  # relative to the folder
    conversion.report.benchmark = benchmark
    return benchmark
