"""What the user's `device` option means on this machine: an ONNX Runtime provider and a torch device.

One option feeds two consumers: the benchmark opens ONNX Runtime sessions on a provider, distillation trains
with torch on a device. `resolve_device` is the one place that reads it, so that both agree (e.g. `tensorrt`
is ONNX Runtime's TensorRT provider, and torch trains on the same GPU through CUDA).
"""

from __future__ import annotations

import contextlib
import dataclasses
import platform
from pathlib import Path

import onnxruntime as ort
import torch

from convert.errors import ConvertError

__all__ = ["DEVICES", "PROVIDERS", "Device", "cannot_run", "device_name", "resolve_device"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "tensorrt")
# ONNX Runtime's execution provider of each device
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_NO_GPU = "no CUDA GPU is visible (torch.cuda.is_available() is False)"


@dataclasses.dataclass(frozen=True)
class Device:
    """A `device` option resolved on this machine, before any model is loaded."""

    name: str  # what was asked for: auto | cpu | cuda | tensorrt
    torch_device: torch.device  # where torch runs (distillation): the CPU, or CUDA for cuda and tensorrt
    # Where ONNX Runtime runs: cpu | cuda | tensorrt; None where this onnxruntime build cannot run `name`
    # (torch can still train there: distillation on CUDA does not need ONNX Runtime's CUDA provider).
    provider: str | None
    reason: str  # why `provider` (e.g. why auto chose the CPU), or why there is none

    def require_provider(self) -> str:
        """The ONNX Runtime device (cpu | cuda | tensorrt).

        Raises:
            ConvertError: where this onnxruntime build cannot run `name`.
        """
        if self.provider is None:
            raise ConvertError(cannot_run(self.name, self.reason))
        return self.provider

    def torch_reason(self) -> str:
        """Why torch runs on `torch_device` (the PyTorch runtime's benchmark records it, as ONNX Runtime's does
        `reason`)."""
        if self.name != "auto":
            return f"device {self.name} was asked for"
        return "auto: a CUDA GPU is visible" if self.torch_device.type == "cuda" else f"auto chose the CPU: {_NO_GPU}"


def resolve_device(name: str) -> Device:
    """What `name` (auto | cpu | cuda | tensorrt) means here. `auto` is CUDA where torch sees a GPU (and ONNX Runtime
    runs there when its CUDA provider is built in), else the CPU.

    Raises:
        ConvertError: for an unknown name, or `cuda` or `tensorrt` where torch sees no GPU.
    """
    if name not in DEVICES:
        raise ConvertError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    cpu = torch.device("cpu")
    if name == "cpu":
        return Device(name, cpu, "cpu", "device cpu was asked for")
    if not torch.cuda.is_available():
        if name == "auto":
            return Device(name, cpu, "cpu", f"auto chose the CPU: {_NO_GPU}")
        raise ConvertError(cannot_run(name, _NO_GPU))
    cuda = torch.device("cuda")
    wanted = "cuda" if name == "auto" else name
    if PROVIDERS[wanted] not in ort.get_available_providers():
        missing = f"this onnxruntime build has no {PROVIDERS[wanted]}"
        if name == "auto":
            return Device(name, cuda, "cpu", f"auto chose the CPU: {missing}")
        return Device(name, cuda, None, missing)
    return Device(
        name, cuda, wanted, "auto: a CUDA GPU is visible" if name == "auto" else f"device {name} was asked for"
    )


def cannot_run(name: str, why: str) -> str:
    """The message for `device` `name` refused here, and `why`."""
    return f"`device`={name} cannot run here ({why}): use `device`=cpu or auto"


def device_name(device: torch.device) -> str:
    """The GPU's name for a CUDA device, else the CPU's model name (what a latency measured there depends on)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
