"""Benchmark PyTorch modules side by side on PyTorch itself: eager or `torch.compile`, on the CPU or CUDA, in
float32, float16 or bfloat16, optionally channels-last (as TorchServe, Triton's PyTorch backend and
`torch.compile` users deploy).

The harness and statistics are ONNX Runtime's (`convert.runtime.timing`): every model warmed at every batch size,
then warm-up runs, then the models alternate run by run; p50/p90/p99. On CUDA every run ends with
`torch.cuda.synchronize()`, so that a time is the GPU's work and not its launch, and cuDNN's autotuner is on
(`torch.backends.cudnn.benchmark`, as deployments with fixed shapes run): it tunes in the warm-up runs. A compiled
model gets a static graph per batch size (`dynamic=False`), compiled in its first run there
(`ModelTiming.compile_seconds`); where dynamo would silently fall back to eager (its recompile limit), the
benchmark fails instead of timing eager code as compiled.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import _dynamo as dynamo  # torch.compile's front end; reset() and config are its documented API
from torch import nn

from convert.artifacts import MODEL, REPORT_JSON
from convert.common import Progress, as_inputs, no_progress
from convert.errors import ConvertError, one_line
from convert.load import load_model, make_inputs
from convert.report.noise import noise_notes
from convert.report.schema import Benchmark, ModelTiming, TorchRuntime
from convert.runtime.config import BenchConfig
from convert.runtime.devices import device_name, resolve_device
from convert.runtime.parity import with_batch
from convert.runtime.sessions import default_threads
from convert.runtime.timing import Runner, rss_bytes, speedups, time_batches

__all__ = ["TORCH_DTYPES", "benchmark_torch", "load_timed_models", "prepare_module"]

logger = logging.getLogger(__name__)

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# channels-last layout of a tensor, by its number of dims (other tensors keep their layout)
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def benchmark_torch(
    models: Sequence[nn.Module],
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    config: BenchConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    macs: Sequence[int | None] | None = None,
    progress: Progress | None = None,
) -> Benchmark:
    """Time PyTorch modules side by side at each batch size; speedups are relative to the first model.

    The models are not changed: each is deep-copied, put in eval mode, on the device, in the dtype and memory
    format, and compiled if asked. Inputs are random (seeded), shaped like `example_inputs` but for the batch.

    Args:
        models: modules taking the positional inputs; dim 0 of each input is the batch.
        example_inputs: one tensor or a sequence of positional input tensors.
        config: runtime "torch": device, threads, compile, dtype, channels-last, warm-up, runs or duration,
            batch sizes.
        names: a name per model (default: the class names).
        macs: multiply-accumulates per model (at any one batch size), for the MAC ratio beside each speedup.
        progress: called with (what is running, fraction done).

    Raises:
        ConvertError: for a runtime other than "torch", a device that cannot run here, or a model that fails to
            run (or to compile) on the inputs.

    Example:
        >>> config = BenchConfig(runtime="torch", device="cuda", compile=True, dtype="bfloat16", channels_last=True)
        >>> result = benchmark_torch([original, converted], torch.randn(1, 3, 224, 224), config)
    """
    config = config or BenchConfig(runtime="torch")
    if config.runtime != "torch":
        raise ConvertError("PyTorch modules run on the PyTorch runtime: use `runtime`=torch")
    if not models:
        raise ConvertError("no models to benchmark: give one or more modules")
    names = list(names or [type(m).__name__ for m in models])
    notify = progress or no_progress
    resolved = resolve_device(config.device)  # refuses cuda where torch sees no GPU
    device, dtype = resolved.torch_device, TORCH_DTYPES[config.dtype]
    if resolved.name == "auto" and device.type == "cpu":
        logger.warning("benchmarking on the CPU: %s", resolved.torch_reason().removeprefix("auto chose the CPU: "))
    inputs = as_inputs(example_inputs)
    batches = {b: _placed(with_batch(inputs, b), device, dtype, config.channels_last) for b in config.batch_sizes}
    notes = _notes(config, device, inputs)
    timings: list[ModelTiming] = []
    modules: list[nn.Module] = []
    with _running(config, device, len(models)) as threads:
        for model, name in zip(models, names, strict=True):
            notify(f"loading {name}", 0.0)
            rss, allocated = rss_bytes(), _reset_peak(device)
            module = prepare_module(model, device, config)
            first_runs = [_first_run(module, batches[b], device, name) for b in config.batch_sizes]
            peak = None if allocated is None else max(0, torch.cuda.max_memory_allocated(device) - allocated)
            compiled = sum(first_runs) if config.compile else None
            timings.append(ModelTiming(name, "", [], max(0, rss_bytes() - rss), peak, compiled))
            modules.append(module)
        time_batches(timings, lambda b: [_runner(m, batches[b], device) for m in modules], config, notify)
    return Benchmark(
        device=device.type,
        requested_device=config.device,
        reason=resolved.torch_reason(),
        providers=[],
        provider_options={},
        ort_version=None,
        threads=threads,
        warmup=config.warmup,
        runs=None if config.duration is not None else config.runs,
        duration=config.duration,
        batch_sizes=list(config.batch_sizes),
        models=timings,
        speedup=speedups(timings, macs),
        notes=[*notes, *noise_notes(timings)],
        runtime="torch",
        torch=TorchRuntime(torch.__version__, config.compile, config.dtype, config.channels_last, device_name(device)),
    )


def prepare_module(model: nn.Module, device: torch.device, config: BenchConfig) -> nn.Module:
    """A copy of `model` as the PyTorch runtime times it: eval mode, on `device`, in `config.dtype`, channels-last
    if asked, and compiled (default mode, static shapes) if asked; `model` is not changed."""
    module = copy.deepcopy(model).eval().to(device=device, dtype=TORCH_DTYPES[config.dtype])
    if config.channels_last:
        with torch.no_grad():
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                if tensor.dim() in _CHANNELS_LAST:
                    tensor.data = tensor.data.contiguous(memory_format=_CHANNELS_LAST[tensor.dim()])
    return torch.compile(module, dynamic=False) if config.compile else module


def load_timed_models(
    sources: Sequence[str],
    input_shapes: Sequence[Sequence[int]] | None = None,
    input_dtype: str = "float32",
    on_warning: Callable[[str], None] | None = None,
) -> tuple[list[nn.Module], tuple[torch.Tensor, ...]]:
    """The models and example inputs of a PyTorch-runtime benchmark of model sources (`convert bench --runtime torch`).

    Args:
        sources: factory specs (package.module:callable), .pt2 archives, whole-model pickles, or output folders of
            a conversion (a folder with report.json: its model.pt).
        input_shapes: example input shapes; None: the first .pt2 archive's example inputs, else the input shapes
            in the first output folder's report.json.
        input_dtype: of the example inputs given by `input_shapes`.
        on_warning: receives one-line warnings (e.g. that loading a pickle runs code from it).

    Raises:
        ConvertError: for a source that does not load, or when no example input shape is known.
    """
    models, stored, recorded = [], None, None
    for source in sources:
        folder = Path(source)
        if folder.is_dir():
            if not (folder / REPORT_JSON).is_file():
                raise ConvertError(
                    f"{source} is a folder without {REPORT_JSON} and {MODEL}: give a model file, a factory spec, or "
                    "the output folder of a conversion"
                )
            report = json.loads((folder / REPORT_JSON).read_text())
            if not (folder / MODEL).is_file():
                raise ConvertError(_no_model_pt(source, report))
            recorded = recorded or (report["input_shapes"], report["input_dtype"])
            source = str(folder / MODEL)
        loaded = load_model(source, on_warning=on_warning)
        stored = stored or loaded.example_inputs
        models.append(loaded.model)
    if input_shapes:
        return models, make_inputs(input_shapes, input_dtype)
    if stored is not None:
        return models, stored
    if recorded is not None:
        return models, make_inputs(*recorded)
    raise ConvertError("the example input shape is unknown: set `input_shapes`, e.g. `input_shapes`=1,3,224,224")


def _no_model_pt(source: str, report: dict[str, Any]) -> str:
    """What to do with an output folder that has no model.pt: the model did not pickle, or the file was removed."""
    why = report.get("model_pt_skipped")
    cause = f"the model does not pickle ({why})" if why else "it was removed"
    return (
        f"{source} has no {MODEL}: {cause}; save the model rebuilt from its plan.json and model.safetensors "
        "(convert.apply_plan) with torch.export.save as a .pt2, and give that"
    )


def _placed(
    inputs: tuple[torch.Tensor, ...], device: torch.device, dtype: torch.dtype, channels_last: bool
) -> tuple[torch.Tensor, ...]:
    """The inputs on `device`, float ones in `dtype`, 4-D and 5-D ones channels-last if asked."""
    placed = []
    for t in inputs:
        t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        if channels_last and t.dim() in _CHANNELS_LAST:
            t = t.contiguous(memory_format=_CHANNELS_LAST[t.dim()])
        placed.append(t)
    return tuple(placed)


def _runner(module: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device) -> Runner:
    """One run of `module` on `inputs`, finished on the device when it returns."""
    if device.type == "cuda":

        def run() -> None:
            module(*inputs)
            torch.cuda.synchronize(device)  # the GPU's time, not the launch's

        return run
    return lambda: module(*inputs)


def _first_run(module: nn.Module, inputs: tuple[torch.Tensor, ...], device: torch.device, name: str) -> float:
    """Seconds of the first run at this batch size (where a compiled model compiles its graph).

    Raises:
        ConvertError: when the model fails to run or to compile (dynamo's recompile limit included).
    """
    begin = time.perf_counter()
    try:
        _runner(module, inputs, device)()
    except Exception as e:  # the user's model, or torch.compile on it: one line saying which
        raise ConvertError(f"{name} fails on the PyTorch runtime ({one_line(e)})") from e
    return time.perf_counter() - begin


def _notes(config: BenchConfig, device: torch.device, inputs: tuple[torch.Tensor, ...]) -> list[str]:
    notes = []
    if device.type == "cuda":
        notes.append("cuDNN's autotuner on (torch.backends.cudnn.benchmark): algorithms chosen in the warm-up runs")
        if config.dtype == "float32" and torch.backends.cudnn.allow_tf32:
            notes.append(
                "torch.backends.cudnn.allow_tf32 is True (PyTorch's default): on Ampere and newer GPUs float32 "
                "convs run in TF32, not true float32"
            )
    flat = [t for t in inputs if t.dim() not in _CHANNELS_LAST]
    if config.channels_last and flat:
        notes.append(f"channels-last applies to 4-D and 5-D tensors: {len(flat)} input(s) kept their layout")
    return notes


def _reset_peak(device: torch.device) -> int | None:
    """CUDA memory allocated now, with the peak statistic reset to it; None on the CPU."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


@contextlib.contextmanager
def _running(config: BenchConfig, device: torch.device, count: int) -> Iterator[int | None]:
    """The process state a benchmark runs in, restored after it: no autograd; on the CPU, `config.threads` intra-op
    threads (yielded); on CUDA, cuDNN's autotuner; with compile, a fresh dynamo cache that fails where it would
    fall back to eager."""
    threads = None if device.type == "cuda" else config.threads or default_threads()
    before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if config.compile:
            dynamo.reset()  # earlier graphs of the same code would count towards the recompile limit
            stack.enter_context(_compile_limits(count * len(config.batch_sizes)))
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            else:
                torch.backends.cudnn.benchmark = True
            yield threads
        finally:
            torch.set_num_threads(before[0])
            torch.backends.cudnn.benchmark = before[1]


def _compile_limits(graphs: int) -> contextlib.AbstractContextManager:
    """dynamo's settings for `graphs` static graphs of (often) the same code: room for all of them, and an error
    rather than a silent fall back to eager beyond (names of torch 2.6+, and the older ones where they exist)."""
    config = dynamo.config
    room = max(8, 2 * graphs)
    wanted = {
        "recompile_limit": room,
        "cache_size_limit": room,
        "accumulated_recompile_limit": max(256, room),
        "accumulated_cache_size_limit": max(256, room),
        "fail_on_recompile_limit_hit": True,
        "fail_on_cache_limit_hit": True,
    }
    return config.patch(**{name: value for name, value in wanted.items() if hasattr(config, name)})
