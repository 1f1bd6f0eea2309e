"""Benchmark ONNX models side by side on ONNX Runtime (CUDA provider on a GPU, CPU provider otherwise).

Method (as ONNX Runtime's perf tool and Olive do): warm-up runs not counted, then per-run perf_counter around
each run; the models alternate run by run so that drift on a shared machine hits them alike; inputs and
outputs are bound on the device (IO binding) so host-device copies are not timed. On CPU the models share
one intra-op thread pool (see `convert.runtime.sessions`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import torch

from convert.artifacts import CONVERTED_INT8_ONNX, CONVERTED_ONNX, ORIGINAL_INT8_ONNX, ORIGINAL_ONNX
from convert.common import Progress
from convert.conversion import Conversion
from convert.errors import ConvertError
from convert.report.schema import Benchmark, Latency, ModelTiming, Speedup
from convert.runtime.devices import DEVICES, Device, resolve_device
from convert.runtime.sessions import OpenSession, open_on, random_input, static_batch_message, validate_onnx_file

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "BenchConfig",
    "benchmark_conversion",
    "benchmark_onnx",
    "identity_model",
    "latency_stats",
    "rss_bytes",
    "time_side_by_side",
]

logger = logging.getLogger(__name__)

DEFAULT_WARMUP = 10  # Olive's default
DEFAULT_RUNS = 100
DEFAULT_BATCH_SIZES = (1,)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Where and how long to time."""

    device: str = "auto"  # auto | cpu | cuda | tensorrt; auto is CUDA when a session really runs there, else CPU
    threads: int | None = None  # CPU intra-op threads; None: the physical cores
    warmup: int = DEFAULT_WARMUP  # untimed runs per model and batch size
    runs: int = DEFAULT_RUNS  # timed runs per model and batch size
    duration: float | None = None  # seconds of timed runs per batch size (all models), instead of `runs`
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConvertError(f"unknown device {self.device!r}: use one of {', '.join(DEVICES)}")
        if self.threads is not None and self.threads < 1:
            raise ConvertError(f"threads {self.threads} is not valid: use a positive integer")
        if self.warmup < 0:
            raise ConvertError(f"warmup {self.warmup} is not valid: use 0 or more runs")
        if self.runs < 1:
            raise ConvertError(f"runs {self.runs} is not valid: use 1 or more")
        if self.duration is not None and not self.duration > 0:
            raise ConvertError(f"duration {self.duration} is not valid: use a positive number of seconds")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConvertError(f"batch sizes {list(self.batch_sizes)} are not valid: use positive sizes, e.g. 1,8")


def latency_stats(batch: int, seconds: Sequence[float]) -> Latency:
    """Percentiles by nearest rank (the smallest time that at least p% of the runs do not exceed), mean, min,
    population std (milliseconds) and throughput (items per second: batch / mean) of per-run times."""
    if not seconds:
        raise ValueError("no timed runs")
    ms = sorted(s * 1000.0 for s in seconds)

    def percentile(p: int) -> float:
        return ms[max(0, -(-p * len(ms) // 100) - 1)]  # rank ceil(p/100 * n), in integers

    mean = statistics.fmean(ms)
    return Latency(
        batch=batch,
        runs=len(ms),
        p50=percentile(50),
        p90=percentile(90),
        p99=percentile(99),
        mean=mean,
        min=ms[0],
        std=statistics.pstdev(ms),
        throughput=batch * 1000.0 / mean if mean > 0 else float("inf"),
    )


def time_side_by_side(
    runners: Sequence[Callable[[], object]],
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    duration: float | None = None,
    on_round: Callable[[float], None] | None = None,
) -> list[list[float]]:
    """Seconds per run of each runner, the runners alternating run by run after `warmup` untimed runs each.

    Args:
        runners: zero-argument functions, each one run of a model.
        warmup: untimed runs per runner.
        runs: timed runs per runner (unless `duration`).
        duration: time rounds for this many seconds (at least one round) instead of `runs` rounds.
        on_round: called after each round with the fraction done.
    """
    for run in runners:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runners]
    clock = time.perf_counter
    start = clock()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run is not the model's time
    try:
        while True:
            for run, record in zip(runners, times, strict=True):
                begin = clock()
                run()
                record.append(clock() - begin)
            done = (clock() - start) / duration if duration is not None else len(times[0]) / runs
            if on_round is not None:
                on_round(min(done, 1.0))
            if done >= 1.0:
                return times
    finally:
        if was_enabled:
            gc.enable()


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
        config: device, threads, warm-up, runs or duration, batch sizes.
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
    for index, batch in enumerate(config.batch_sizes):
        runners = [_runner(s, batch, p) for s, p in zip(sessions, paths, strict=True)]

        def on_round(fraction: float, index: int = index, batch: int = batch) -> None:
            notify(f"timing batch {batch}", (index + fraction) / len(config.batch_sizes))

        times = time_side_by_side(
            runners, warmup=config.warmup, runs=config.runs, duration=config.duration, on_round=on_round
        )
        for model, seconds in zip(models, times, strict=True):
            model.latency.append(latency_stats(batch, seconds))
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
        speedup=_speedups(models, macs),
        notes=list(dict.fromkeys(notes)),
    )


def _speedups(models: list[ModelTiming], macs: Sequence[int | None] | None) -> list[Speedup]:
    baseline = models[0]
    rows = []
    for index, model in enumerate(models[1:], start=1):
        ratio = None
        if macs and macs[0] and macs[index]:
            ratio = macs[0] / macs[index]
        for base, lat in zip(baseline.latency, model.latency, strict=True):
            speedup = base.p50 / lat.p50 if lat.p50 > 0 else float("inf")
            rows.append(Speedup(lat.batch, model.name, baseline.name, speedup, ratio, ratio and speedup / ratio))
    return rows


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


def rss_bytes() -> int:
    """Resident memory of this process, after glibc hands freed heap pages back to the OS: else memory freed
    earlier (e.g. by parsing the model) and reused by the session would hide its growth."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass
    return psutil.Process().memory_info().rss


def benchmark_conversion(
    conversion: Conversion,
    folder: str | os.PathLike[str],
    config: BenchConfig | None = None,
    progress: Progress | None = None,
) -> Benchmark:
    """Time the original and the converted model's ONNX files in `folder` (from `export_conversion`) side by side,
    with their INT8 files after each when the conversion was quantized (`quantize_conversion`), and record it as
    `conversion.report.benchmark`. Speedups are over the original float model."""
    totals = conversion.report.totals
    folder = Path(folder)
    files = [(ORIGINAL_ONNX, "original", totals.macs_before), (CONVERTED_ONNX, "converted", totals.macs_after)]
    if conversion.report.quantize is not None:  # no MAC ratio for INT8: a MAC is not the float one's cost
        files[1:1] = [(ORIGINAL_INT8_ONNX, "original int8", None)]
        files.append((CONVERTED_INT8_ONNX, "converted int8", None))
    benchmark = benchmark_onnx(
        [folder / name for name, _, _ in files],
        config,
        names=[label for _, label, _ in files],
        macs=[macs for _, _, macs in files],
        progress=progress,
    )
    for timing in benchmark.models:
        timing.path = Path(timing.path).name  # relative to the folder
    conversion.report.benchmark = benchmark
    return benchmark
