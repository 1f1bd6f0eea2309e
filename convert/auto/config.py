"""What `--to auto` aims for and where it measures."""

from __future__ import annotations

import dataclasses

from convert.errors import ConvertError
from convert.runtime.config import BenchConfig
from convert.runtime.quantize import QuantizeConfig

__all__ = ["AutoConfig"]


@dataclasses.dataclass(frozen=True)
class AutoConfig:
    """What `--to auto` aims for and where it measures."""

    target_speedup: float = 2.0  # end-to-end, original latency / converted latency, on `device`
    max_error: float | None = None  # drop candidates whose layer output error (relative) is above this
    device: str = "cpu"  # cpu | cuda | auto: where the plan is for (ONNX Runtime's provider, or torch's device)
    threads: int | None = None  # CPU intra-op threads; None: the physical cores
    runs: int = 30  # timed runs per candidate layer (median kept)
    warmup: int = 5
    max_candidates: int = 10  # per layer, after dropping dominated ones (evenly spread over MACs)
    cache_dir: str | None = None  # None: LatencyCache.default()
    # The runtime the plan is for, and its settings (see BenchConfig): layers and models are timed there.
    runtime: str = "ort"  # ort | torch
    compile: bool = False  # runtime torch: torch.compile
    dtype: str = "float32"  # runtime torch: float32 | float16 | bfloat16
    channels_last: bool = False  # runtime torch: channels-last memory format
    # Plan for INT8 (`convert.runtime.quantize.FORMATS` names; a job's `quantize` sets them): the original is timed
    # quantized in each format, the candidates as one-layer models quantized in the fastest, and the end-to-end fit
    # on quantized files. The target speedup stays over the float original. Empty: plan for float.
    quantize: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.target_speedup >= 1.0:
            raise ConvertError(f"target speedup {self.target_speedup} is not valid: use 1.0 or more, e.g. 2")
        if self.max_error is not None and not self.max_error > 0:
            raise ConvertError(f"max error {self.max_error} is not valid: use a positive fraction, e.g. 0.1")
        if self.max_candidates < 2:
            raise ConvertError("max_candidates must be at least 2")
        self.bench()  # validates device, threads, warm-up, runs and the runtime's settings
        if self.quantize:
            QuantizeConfig(formats=self.quantize)  # validates the format names
            if self.runtime != "ort":
                raise ConvertError("an INT8 plan (`quantize`) is for ONNX Runtime: use `runtime`=ort")

    def bench(self) -> BenchConfig:
        """Where and how the candidates are timed (the end-to-end benchmark of the planned model too)."""
        return BenchConfig(
            device=self.device,
            threads=self.threads,
            warmup=self.warmup,
            runs=self.runs,
            runtime=self.runtime,
            compile=self.compile,
            dtype=self.dtype,
            channels_last=self.channels_last,
        )
