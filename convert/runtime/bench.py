"""Benchmark ONNX models side by side on ONNX Runtime (CUDA provider on a GPU, CPU provider otherwise).

Method (as ONNX Runtime's perf tool and Olive do): warm-up runs not counted, then per-run perf_counter around
each run; the models alternate run by run so that drift on a shared machine hits them alike; inputs and
outputs are bound on the device (IO binding) so host-device copies are not timed. On CPU the models share
one intra-op thread pool: with a pool each, the idle model's threads spin while the other runs and steal
its cores (on 2 cores that doubled ResNet-18's latency).
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil

from convert.artifacts import CONVERTED_ONNX, ORIGINAL_ONNX
from convert.common import Progress
from convert.conversion import Conversion
from convert.errors import ConvertError, one_line
from convert.report.schema import Benchmark, Latency, ModelTiming, Speedup

logger = logging.getLogger(__name__)

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "tensorrt")
DEFAULT_WARMUP = 10  # Olive's default
DEFAULT_RUNS = 100
DEFAULT_BATCH_SIZES = (1,)
# cuDNN conv algorithms by EXHAUSTIVE search (the default); never DEFAULT, which in ORT >= 1.20 selects
# cuDNN's fallback engine, many times slower. use_tf32=1 is ORT's default, recorded and noted in the report.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "cudnn_conv_use_max_workspace": "1", "use_tf32": "1"}
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


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


@dataclasses.dataclass
class OpenSession:
    """An ONNX Runtime session and the truth about where it runs."""

    session: ort.InferenceSession
    device: str  # cpu | cuda | tensorrt: the provider that runs it, checked with get_providers()
    reason: str  # why this device (e.g. why auto chose the CPU)
    threads: int | None  # intra-op threads (CPU provider)
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. nodes that fell back to the CPU


def validate_onnx_file(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load the graph (not the weights) and refuse external data that points outside the model's folder.

    Raises:
        ConvertError: for a missing, unreadable, truncated or non-ONNX file, or an unsafe external-data location.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such ONNX file" if not path.exists() else f"{path} is not a file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # noqa: BLE001 - not ONNX, or truncated
        raise ConvertError(
            f"{path} is not a readable ONNX model ({one_line(e)}): is it an ONNX file, and complete?"
        ) from e
    if not proto.graph.node or not proto.ir_version:
        raise ConvertError(f"{path} holds no ONNX graph: is it an ONNX model, and complete?")
    folder = path.resolve().parent
    from onnx.external_data_helper import _get_all_tensors

    for tensor in _get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        # resolve() follows symbolic links, so a link inside the folder that points out is refused too
        if not location or os.path.isabs(location) or not (folder / location).resolve().is_relative_to(folder):
            raise ConvertError(
                f"{path}: the external data of weight {tensor.name!r} is at {location!r}, outside the model's "
                "folder; refusing to read it (keep the weights file next to the .onnx)"
            )
    return proto


def resolve_device(device: str) -> tuple[str, str]:
    """(device, reason) from what this machine offers, before any model is loaded.

    Raises:
        ConvertError: for `cuda` or `tensorrt` where they cannot run.
    """
    if device not in DEVICES:
        raise ConvertError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu", "asked for with --device cpu"
    wanted = "cuda" if device == "auto" else device
    missing = _gpu_missing(wanted)
    if missing is None:
        return wanted, f"asked for with --device {device}" if device != "auto" else "auto: a CUDA GPU is visible"
    if device == "auto":
        return "cpu", f"auto chose the CPU: {missing}"
    raise ConvertError(f"--device {device} cannot run here ({missing}): use --device cpu or auto")


def _gpu_missing(device: str) -> str | None:
    provider = _PROVIDERS[device]
    if provider not in ort.get_available_providers():
        return f"this onnxruntime build has no {provider}"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def open_session(path: str | os.PathLike[str], device: str = "auto", threads: int | None = None) -> OpenSession:
    """A session on `device`; `auto` is CUDA when a session really runs there, else CPU (`reason` says why).

    Args:
        path: the .onnx file (checked by `validate_onnx_file` first).
        device: auto | cpu | cuda | tensorrt.
        threads: CPU intra-op threads; None for the physical cores.

    Raises:
        ConvertError: for a bad file, or `cuda`/`tensorrt` asked for where it cannot run.
    """
    validate_onnx_file(path)
    resolved, reason = resolve_device(device)
    if device == "auto" and resolved == "cpu":
        logger.warning("running on the CPU: %s", reason)
    return _open(path, resolved, reason, device == "auto", threads, shared_pool=False)


def _open(
    path: str | os.PathLike[str], device: str, reason: str, auto: bool, threads: int | None, shared_pool: bool
) -> OpenSession:
    """A session on the resolved `device`; with `auto`, the CPU when a GPU session does not really start."""
    if device != "cpu":
        opened = _gpu_session(path, device, reason)
        if isinstance(opened, OpenSession):
            return opened
        if not auto:
            raise ConvertError(f"--device {device} cannot run here ({opened}): use --device cpu or auto")
        logger.warning("running on the CPU: %s", opened)
        reason = f"auto chose the CPU: {opened}"
    return _cpu_session(path, threads or default_threads(), reason, shared_pool)


def default_threads() -> int:
    """The physical cores (intra-op threads beyond them only contend)."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _gpu_session(path: str | os.PathLike[str], device: str, reason: str) -> OpenSession | str:
    """A session whose first provider really is the GPU one, or why there is none."""
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # the CUDA and cuDNN libraries that the CUDA build of torch ships
    providers: list = [("CUDAExecutionProvider", dict(CUDA_OPTIONS)), "CPUExecutionProvider"]
    if device == "tensorrt":
        providers.insert(0, "TensorrtExecutionProvider")
    with tempfile.TemporaryDirectory() as folder:
        options = _profiled(_session_options(None), folder)  # the first run shows where each node ran
        try:
            session = _session(path, options, providers)
        except Exception as e:  # noqa: BLE001
            return f"creating a {_PROVIDERS[device]} session failed ({one_line(e)})"
        # A provider that cannot start is dropped with only a log line: never report a CPU time as a GPU time.
        if session.get_providers()[0] != _PROVIDERS[device]:
            return f"{_PROVIDERS[device]} did not start (the session fell back to {session.get_providers()[0]})"
        on_cpu = _placement(session, path).get("CPUExecutionProvider")
    opened = OpenSession(session, device, reason, None)
    if on_cpu:
        ops = ", ".join(f"{op} x{n}" for op, n in on_cpu.most_common())
        opened.notes.append(f"{Path(path).name}: {sum(on_cpu.values())} nodes ran on the CPU provider ({ops})")
    return opened


def node_providers(path: str | os.PathLike[str], providers: Sequence) -> dict[str, Counter[str]]:
    """Per provider, the op types of the nodes it ran in one run of `path` (from ONNX Runtime's profile)."""
    with tempfile.TemporaryDirectory() as folder:
        return _placement(_session(path, _profiled(_session_options(1), folder), providers), path)


def _profiled(options: ort.SessionOptions, folder: str) -> ort.SessionOptions:
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "profile")
    return options


def _placement(session: ort.InferenceSession, path: object) -> dict[str, Counter[str]]:
    """Run a session made with profiling once, then stop profiling (later runs are not profiled) and count the
    nodes each provider ran."""
    rng = np.random.default_rng(0)
    session.run(
        None, {arg.name: _random_input(arg, _static_batch(arg) or 1, rng, path) for arg in session.get_inputs()}
    )
    events = json.loads(Path(session.end_profiling()).read_text())
    placed: dict[str, Counter[str]] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args and event.get("name", "").endswith("_kernel_time"):
            placed.setdefault(args["provider"], Counter())[args.get("op_name", "?")] += 1
    return placed


def _cpu_session(path: str | os.PathLike[str], threads: int, reason: str, shared_pool: bool) -> OpenSession:
    if shared_pool:
        _make_shared_pool(threads)
    notes = []
    if _shared_pool_threads is not None and _shared_pool_threads != threads:
        notes.append(
            f"asked for {threads} threads, ran on {_shared_pool_threads}: ONNX Runtime's shared thread pool is "
            "sized once per process (run the benchmark in a process of its own)"
        )
    session = _session(path, _session_options(threads), ["CPUExecutionProvider"])
    return OpenSession(session, "cpu", reason, _shared_pool_threads or threads, notes)


# ONNX Runtime's process-wide intra-op pool, once this module has made it. Its size is fixed for the process,
# and from then on every session must use it (ORT refuses per-session pools beside a global one).
_shared_pool_threads: int | None = None


def _make_shared_pool(threads: int) -> None:
    global _shared_pool_threads
    if _shared_pool_threads is None:
        ort.set_global_thread_pool_sizes(threads, 1)
        _shared_pool_threads = threads


def _session(path: str | os.PathLike[str], options: ort.SessionOptions, providers: Sequence) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - ORT's refusal of the file is the user's to fix
        raise ConvertError(f"ONNX Runtime cannot load {path} ({one_line(e)})") from e


def _session_options(threads: int | None) -> ort.SessionOptions:
    """A pool of `threads` for the session (None: ORT's default), or the shared pool once it exists."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    if _shared_pool_threads is not None:
        options.use_per_session_threads = False
    elif threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


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
    device, reason = resolve_device(config.device)
    if config.device == "auto" and device == "cpu":
        logger.warning("benchmarking on the CPU: %s", reason.removeprefix("auto chose the CPU: "))
    _warm_runtime(config)
    models, sessions = [], []
    for path, name in zip(paths, names, strict=True):
        notify(f"loading {name}", 0.0)
        rss, gpu = rss_bytes(), _gpu_free_bytes(device)
        opened = _open(path, device, reason, config.device == "auto", config.threads, shared_pool=True)
        if sessions and opened.device != sessions[0].device:
            raise ConvertError(f"{name} runs on {opened.device}, {names[0]} on {sessions[0].device}: not comparable")
        device, reason = opened.device, opened.reason  # the next models go where the first one went
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
        value = _random_input(arg, batch, rng, path)
        binding.bind_ortvalue_input(arg.name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device, 0)
    binding.synchronize_inputs()

    def run() -> None:
        session.run_with_iobinding(binding)  # returns after the device has finished (ORT synchronizes)

    return run


def _random_input(arg: ort.NodeArg, batch: int, rng: np.random.Generator, path: object = "the model") -> np.ndarray:
    shape = list(arg.shape)
    if shape and not isinstance(shape[0], int):
        shape[0] = batch
    if any(not isinstance(d, int) for d in shape):
        raise ConvertError(
            f"{path}: input {arg.name!r} has dynamic dims besides the batch ({arg.shape}): export it with fixed sizes"
        )
    if shape and shape[0] != batch:
        raise ConvertError(_static_batch_message(path, arg.name, shape[0], batch))
    dtype = _NUMPY_TYPES.get(arg.type)
    if dtype is None:
        raise ConvertError(f"{path}: input {arg.name!r} has type {arg.type}, which the benchmark cannot fill")
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype)


def _check_batch_sizes(proto: onnx.ModelProto, path: object, batch_sizes: Sequence[int]) -> None:
    weights = {t.name for t in proto.graph.initializer}
    for arg in proto.graph.input:
        dims = arg.type.tensor_type.shape.dim
        if arg.name in weights or not dims or not dims[0].HasField("dim_value"):
            continue
        static = dims[0].dim_value
        if any(b != static for b in batch_sizes):
            raise ConvertError(
                _static_batch_message(path, arg.name, static, next(b for b in batch_sizes if b != static))
            )


def _static_batch_message(path: object, name: str, static: int, batch: int) -> str:
    return (
        f"{path}: input {name!r} has a static batch of {static} and cannot run batch {batch}: "
        f"use --batch-sizes {static}, or export with a dynamic batch (without --static-shapes)"
    )


def _static_batch(arg: ort.NodeArg) -> int | None:
    return arg.shape[0] if arg.shape and isinstance(arg.shape[0], int) else None


def _warm_runtime(config: BenchConfig) -> None:
    """Start ONNX Runtime (environment, thread pool) on a tiny model, so that the first model's memory growth
    is its own."""
    with tempfile.TemporaryDirectory() as folder:
        path = identity_model(Path(folder) / "identity.onnx")
        _runner(_cpu_session(path, config.threads or default_threads(), "", shared_pool=True), 1, path)()


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


def _gpu_free_bytes(device: str) -> int | None:
    if device == "cpu":
        return None
    try:
        import torch

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
    and record it as `conversion.report.benchmark`."""
    totals = conversion.report.totals
    folder = Path(folder)
    benchmark = benchmark_onnx(
        [folder / ORIGINAL_ONNX, folder / CONVERTED_ONNX],
        config,
        names=["original", "converted"],
        macs=[totals.macs_before, totals.macs_after],
        progress=progress,
    )
    for timing in benchmark.models:
        timing.path = Path(timing.path).name  # relative to the folder
    conversion.report.benchmark = benchmark
    return benchmark
