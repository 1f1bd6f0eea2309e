"""ONNX Runtime sessions that say where they really run: file checks, placement, the shared CPU thread pool.

On CPU the benchmark's models share one intra-op thread pool: with a pool each, the idle model's threads spin
while the other runs and steal its cores (on 2 cores that doubled ResNet-18's latency). The pool is ONNX
Runtime's process-global state, made once: this module is its one owner.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
from onnx.external_data_helper import _get_all_tensors

from convert.errors import ConvertError, one_line
from convert.runtime.devices import PROVIDERS, Device, cannot_run, resolve_device

__all__ = [
    "CUDA_OPTIONS",
    "OpenSession",
    "default_threads",
    "node_providers",
    "open_on",
    "open_session",
    "random_input",
    "session_options",
    "static_batch_message",
    "validate_onnx_file",
]

logger = logging.getLogger(__name__)

# cuDNN conv algorithms by EXHAUSTIVE search (the default); never DEFAULT, which in ORT >= 1.20 selects
# cuDNN's fallback engine, many times slower. use_tf32=1 is ORT's default, recorded and noted in the report.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "cudnn_conv_use_max_workspace": "1", "use_tf32": "1"}
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
    except Exception as e:  # not ONNX, or truncated
        raise ConvertError(
            f"{path} is not a readable ONNX model ({one_line(e)}): is it an ONNX file, and complete?"
        ) from e
    if not proto.graph.node or not proto.ir_version:
        raise ConvertError(f"{path} holds no ONNX graph: is it an ONNX model, and complete?")
    folder = path.resolve().parent
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
    resolved = resolve_device(device)
    if resolved.name == "auto" and resolved.provider == "cpu":
        logger.warning("running on the CPU: %s", resolved.reason)
    return open_on(path, resolved, threads, shared_pool=False)


def open_on(path: str | os.PathLike[str], device: Device, threads: int | None, *, shared_pool: bool) -> OpenSession:
    """A session on `device`'s provider; for `auto`, the CPU when a GPU session does not really start.

    Args:
        path: the .onnx file.
        device: from `resolve_device`.
        threads: CPU intra-op threads; None for the physical cores.
        shared_pool: CPU sessions use the process's shared thread pool (made on first use).

    Raises:
        ConvertError: when ONNX Runtime cannot load the file, or cannot run `device` here.
    """
    provider, reason = device.require_provider(), device.reason
    if provider != "cpu":
        opened = _gpu_session(path, provider, reason)
        if isinstance(opened, OpenSession):
            return opened
        if device.name != "auto":
            raise ConvertError(cannot_run(device.name, opened))
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
        options = _profiled(session_options(None), folder)  # the first run shows where each node ran
        try:
            session = _session(path, options, providers)
        except ConvertError as e:
            return f"creating a {PROVIDERS[device]} session failed ({e})"
        # A provider that cannot start is dropped with only a log line: never report a CPU time as a GPU time.
        if session.get_providers()[0] != PROVIDERS[device]:
            return f"{PROVIDERS[device]} did not start (the session fell back to {session.get_providers()[0]})"
        on_cpu = _placement(session, path).get("CPUExecutionProvider")
    opened = OpenSession(session, device, reason, None)
    if on_cpu:
        ops = ", ".join(f"{op} x{n}" for op, n in on_cpu.most_common())
        opened.notes.append(f"{Path(path).name}: {sum(on_cpu.values())} nodes ran on the CPU provider ({ops})")
    return opened


def node_providers(path: str | os.PathLike[str], providers: Sequence) -> dict[str, Counter[str]]:
    """Per provider, the op types of the nodes it ran in one run of `path` (from ONNX Runtime's profile)."""
    with tempfile.TemporaryDirectory() as folder:
        return _placement(_session(path, _profiled(session_options(1), folder), providers), path)


def _profiled(options: ort.SessionOptions, folder: str) -> ort.SessionOptions:
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "profile")
    return options


def _placement(session: ort.InferenceSession, path: object) -> dict[str, Counter[str]]:
    """Run a session made with profiling once, then stop profiling (later runs are not profiled) and count the
    nodes each provider ran."""
    rng = np.random.default_rng(0)
    session.run(None, {arg.name: random_input(arg, _static_batch(arg) or 1, rng, path) for arg in session.get_inputs()})
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
    session = _session(path, session_options(threads), ["CPUExecutionProvider"])
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
    except Exception as e:  # ORT's refusal of the file is the user's to fix
        raise ConvertError(f"ONNX Runtime cannot load {path} ({one_line(e)})") from e


def session_options(threads: int | None) -> ort.SessionOptions:
    """Options of every session this process opens: a pool of `threads` for the session (None: ORT's default), or
    the shared pool once it exists (ORT refuses a session with a pool of its own from then on)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    if _shared_pool_threads is not None:
        options.use_per_session_threads = False
    elif threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def random_input(arg: ort.NodeArg, batch: int, rng: np.random.Generator, path: object = "the model") -> np.ndarray:
    """A random value for the session input `arg` at `batch` (normal for floats, zeros otherwise).

    Raises:
        ConvertError: for dynamic dims besides the batch, a static batch other than `batch`, or a type numpy
            cannot fill.
    """
    shape = list(arg.shape)
    if shape and not isinstance(shape[0], int):
        shape[0] = batch
    if any(not isinstance(d, int) for d in shape):
        raise ConvertError(
            f"{path}: input {arg.name!r} has dynamic dims besides the batch ({arg.shape}): export it with fixed sizes"
        )
    if shape and shape[0] != batch:
        raise ConvertError(static_batch_message(path, arg.name, shape[0], batch))
    dtype = _NUMPY_TYPES.get(arg.type)
    if dtype is None:
        raise ConvertError(f"{path}: input {arg.name!r} has type {arg.type}, which the benchmark cannot fill")
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype)


def static_batch_message(path: object, name: str, static: int, batch: int) -> str:
    """The refusal of batch `batch` by input `name` of `path`, whose batch is fixed at `static`."""
    return (
        f"{path}: input {name!r} has a static batch of {static} and cannot run batch {batch}: "
        f"use `batch_sizes`={static}, or export with a dynamic batch (drop `dynamic_batch`=False)"
    )


def _static_batch(arg: ort.NodeArg) -> int | None:
    return arg.shape[0] if arg.shape and isinstance(arg.shape[0], int) else None
