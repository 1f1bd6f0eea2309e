"""The one resolver of the `device` option: the ONNX Runtime provider (benchmark) and the torch device
(distillation) it means, on this machine and on machines with a GPU or an onnxruntime build without CUDA."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from convert import ConvertError
from convert.runtime.devices import PROVIDERS, resolve_device

HAS_GPU = torch.cuda.is_available()
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
NO_GPU = "no CUDA GPU is visible (torch.cuda.is_available() is False)"


def machine(monkeypatch: pytest.MonkeyPatch, *, gpu: bool, providers: tuple[str, ...]) -> None:
    """Pretend torch does (not) see a GPU and onnxruntime offers `providers` (device names)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [PROVIDERS[p] for p in providers])


@pytest.mark.skipif(HAS_GPU, reason="checks the fallback on a machine without a GPU")
def test_auto_picks_cpu_and_says_why() -> None:
    auto = resolve_device("auto")
    assert (auto.provider, auto.torch_device, auto.reason) == ("cpu", CPU, f"auto chose the CPU: {NO_GPU}")
    cpu = resolve_device("cpu")
    assert (cpu.provider, cpu.torch_device, cpu.reason) == ("cpu", CPU, "device cpu was asked for")


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_gpu_device_without_gpu_is_refused(device: str) -> None:
    with pytest.raises(ConvertError, match=rf"^`device`={device} cannot run here \(.*\): use `device`=cpu or auto$"):
        resolve_device(device)


@pytest.mark.cuda
def test_auto_picks_cuda_on_a_gpu() -> None:
    auto = resolve_device("auto")
    assert auto.torch_device == CUDA and auto.provider in ("cuda", "cpu")  # cpu: an onnxruntime without CUDA
    assert auto.provider == "cpu" or auto.reason == "auto: a CUDA GPU is visible"


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ConvertError, match=r"unknown device 'tpu': use one of auto, cpu, cuda, tensorrt"):
        resolve_device("tpu")


@pytest.mark.parametrize(
    ("name", "provider", "torch_device"),
    [("auto", "cuda", CUDA), ("cpu", "cpu", CPU), ("cuda", "cuda", CUDA), ("tensorrt", "tensorrt", CUDA)],
)
def test_gpu_machine_with_every_provider(monkeypatch: pytest.MonkeyPatch, name, provider, torch_device) -> None:
    """TensorRT is ONNX Runtime's: torch trains on the same GPU through CUDA."""
    machine(monkeypatch, gpu=True, providers=("cpu", "cuda", "tensorrt"))
    device = resolve_device(name)
    assert (device.provider, device.torch_device) == (provider, torch_device)
    assert device.require_provider() == provider


def test_gpu_machine_without_onnxruntime_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch trains on CUDA without ONNX Runtime's CUDA provider; only the benchmark needs it."""
    machine(monkeypatch, gpu=True, providers=("cpu",))
    auto = resolve_device("auto")
    assert (auto.provider, auto.torch_device) == ("cpu", CUDA)
    assert auto.reason == "auto chose the CPU: this onnxruntime build has no CUDAExecutionProvider"
    for name in ("cuda", "tensorrt"):
        device = resolve_device(name)
        assert device.torch_device == CUDA and device.provider is None
        with pytest.raises(ConvertError, match=rf"^`device`={name} cannot run here \(this onnxruntime build has no"):
            device.require_provider()


def test_no_gpu_refuses_both_consumers(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, gpu=False, providers=("cpu", "cuda"))
    assert resolve_device("auto").torch_device == CPU and resolve_device("auto").provider == "cpu"
    with pytest.raises(ConvertError, match=r"^`device`=cuda cannot run here \(no CUDA GPU is visible"):
        resolve_device("cuda")
