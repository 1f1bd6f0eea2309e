"""What a benchmark times, where and how long: `BenchConfig`, shared by ONNX Runtime and the PyTorch runtime."""

from __future__ import annotations

import dataclasses

from convert.errors import ConvertError
from convert.runtime.devices import DEVICES

__all__ = [
    "BENCH_DTYPES",
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_RUNS",
    "DEFAULT_WARMUP",
    "RUNTIMES",
    "BenchConfig",
]

DEFAULT_WARMUP = 10  # Olive's default
DEFAULT_RUNS = 100
DEFAULT_BATCH_SIZES = (1,)
# ort: ONNX Runtime on the exported files; torch: the PyTorch modules themselves (eager or torch.compile)
RUNTIMES = ("ort", "torch")
BENCH_DTYPES = ("float32", "float16", "bfloat16")  # the PyTorch runtime's dtypes for the timed models


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Where and how long to time, and on which runtime."""

    device: str = "auto"  # auto | cpu | cuda | tensorrt; auto is CUDA when a session really runs there, else CPU
    threads: int | None = None  # CPU intra-op threads; None: the physical cores
    warmup: int = DEFAULT_WARMUP  # untimed runs per model and batch size
    runs: int = DEFAULT_RUNS  # timed runs per model and batch size
    duration: float | None = None  # seconds of timed runs per batch size (all models), instead of `runs`
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    runtime: str = "ort"  # ort | torch (see RUNTIMES)
    compile: bool = False  # runtime torch: torch.compile (default mode) instead of eager
    # runtime torch: the timed models' dtype (and their float inputs'); ONNX Runtime times the float32 export
    dtype: str = "float32"
    channels_last: bool = False  # runtime torch: models and inputs in the channels-last memory format

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
        if self.runtime not in RUNTIMES:
            raise ConvertError(f"unknown runtime {self.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if self.dtype not in BENCH_DTYPES:
            raise ConvertError(f"`dtype`={self.dtype} is not valid: use one of {', '.join(BENCH_DTYPES)}")
        if self.runtime == "ort":
            torch_only = [f"`{name}`" for name, on in self.torch_settings().items() if on]
            if torch_only:
                verb = "goes" if len(torch_only) == 1 else "go"
                raise ConvertError(
                    f"{' and '.join(torch_only)} {verb} with `runtime`=torch (ONNX Runtime times the float32 ONNX "
                    "export as it is): add `runtime`=torch"
                )
        elif self.device == "tensorrt":
            raise ConvertError(
                "`device`=tensorrt is ONNX Runtime's TensorRT provider: use `device`=cuda with `runtime`=torch"
            )

    def torch_settings(self) -> dict[str, bool]:
        """Per setting of the PyTorch runtime, whether it differs from eager float32 in the default memory format."""
        return {"compile": self.compile, "dtype": self.dtype != "float32", "channels_last": self.channels_last}
