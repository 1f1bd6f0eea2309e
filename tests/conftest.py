"""Shared helpers for the exactness tests: running models without side effects, comparing outputs, and
rebuilding the dense weight a replacement conv computes (independently of convert/)."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

# pytest (>= 9) attaches its log-capture handlers to every non-propagating logger, torch's structured-trace
# logger "torch.__trace" included; torch then builds a trace payload (graphs, stacks) for every event of
# torch.export and fake tensors, which makes each conversion 10-100x slower. Let that logger propagate, so
# pytest leaves it alone (torch only logs to it when it has handlers of its own: never, unless TORCH_TRACE).
logging.getLogger("torch.__trace").propagate = True

# Every Ray process of the tests (the ones they start, and those their servers start) stays on loopback: Ray reads
# this when it is imported, and otherwise turns 127.0.0.1 into the machine's outward address (test_ray checks it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# The test models are tiny: one intra-op thread per process. With `pytest -n 2` on 2 cores, two workers of
# 2 OpenMP threads each oversubscribe the CPU, and each small conv then waits on spinning threads (10-50x).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked `cuda` skip, saying why, where torch sees no GPU (they run with `pytest -m cuda` on one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def torchscript_exports() -> Iterator[None]:
    """Every export of the module that uses this through the TorchScript-based exporter (0.3 s a small model where
    dynamo takes 8-20 s on a loaded CPU), for tests of what comes after the export (dynamo's path: test_onnx_export)."""
    from convert.runtime import export  # here: the helpers above import nothing of convert/

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export, "_export_dynamo", export._export_torchscript)  # noqa: SLF001 - the exporter's seam
        yield


TOL = 1e-5  # relative error allowed between a full-rank conversion and the original (float32)
TOL64 = 1e-10  # the same in float64

PATHS = ("fx", "export", "module-walk")
# The paths on which the test models' functional convs, called in the model's own forward, are rewritten: only fx
# traces that forward (the others are defeated by its control flow), and a functional call is rewritten in a graph of
# the module that makes it; elsewhere they stay as they are, with the reason.
FUNCTIONAL_REWRITTEN = frozenset({"fx"})


class _Float32Draws(TorchFunctionMode):
    """torch.rand(_like) in float64 draws the numbers float32 does (cast up), so that a float64 run sees the float32
    run's random masks. CPU torch.rand draws other bits for float64 from the same seed, and drop-path as
    transformers (Swin, SegFormer) and smp's EfficientNet write it (`floor(keep + rand(dtype=x.dtype))`) drops other
    samples; dropout's bernoulli_ and timm's drop-path draw the same in both dtypes already."""

    _DTYPE = {
        torch.rand: lambda args, kwargs: kwargs.get("dtype") or torch.get_default_dtype(),
        torch.rand_like: lambda args, kwargs: kwargs.get("dtype") or args[0].dtype,
    }

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in self._DTYPE and self._DTYPE[func](args, kwargs) == torch.float64:
            return func(*args, **{**kwargs, "dtype": torch.float32}).double()
        return func(*args, **kwargs)


def forward(model: nn.Module, *inputs: torch.Tensor, seed: int = 0) -> Any:
    """The output of a deep copy of `model` (so its buffers stay as they are), without autograd, with the random
    numbers of `seed`: the same ones in float32 and float64 (_Float32Draws, for float64 inputs only: it costs 10-40%
    of a small model's forward)."""
    model = copy.deepcopy(model)
    float64 = any(t.dtype == torch.float64 for t in inputs)
    draws = _Float32Draws() if float64 else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), torch.no_grad(), draws:
        torch.manual_seed(seed)
        return model(*inputs)


def leaves(output: Any) -> list[torch.Tensor]:
    return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]


def rel_error(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    """||candidate - reference||_F / ||reference||_F, in float64."""
    diff = (candidate.double() - reference.double()).norm()
    return float(diff / reference.double().norm())


def assert_outputs_close(candidate: Any, reference: Any, tol: float = TOL) -> None:
    """Same structure, shapes and dtypes; each tensor within `tol` relative (Frobenius) and elementwise."""
    cand, ref = leaves(candidate), leaves(reference)
    assert pytree.tree_structure(candidate) == pytree.tree_structure(reference)
    assert len(cand) == len(ref) > 0
    for c, r in zip(cand, ref, strict=True):
        assert c.shape == r.shape and c.dtype == r.dtype
        assert rel_error(c, r) <= tol, f"relative error {rel_error(c, r):.3g} > {tol:g}"
        torch.testing.assert_close(c, r, rtol=tol, atol=tol * float(r.abs().max()))


def assert_same_function(converted: nn.Module, original: nn.Module, inputs: list[torch.Tensor], tol: float = TOL):
    """The converted model computes what the original does on `inputs` (both run on deep copies)."""
    assert_outputs_close(forward(converted, *inputs), forward(original, *inputs), tol)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]  # noqa: SLF001 - every conv


def converted_rows(report: Any) -> list[Any]:
    return [r for r in report.layers if r.status == "converted"]


def skipped_rows(report: Any) -> list[Any]:
    return [r for r in report.layers if r.status == "skipped"]


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The (C_out, C_in, *k) weight of the standard (groups=1) conv that `module` computes, in float64.

    `module` is a conv (any groups; a transposed conv's weight is read in the standard orientation, entry
    [o, i] mapping input channel i to output channel o), or Sequential(first conv, 1x1 conv), whose dense
    weight is the 1x1 conv's matrix times the first conv's.
    """
    if isinstance(module, nn.Sequential):
        first, pointwise = list(module)
        k = pointwise.weight.shape[2:]
        assert all(d == 1 for d in k) and not pointwise.transposed
        assert all(s == 1 for s in pointwise.stride) and all(p == 0 for p in pointwise.padding)
        assert first.bias is None
        inner = dense_weight(first)  # (M, C_in, *k)
        mixing = dense_weight(pointwise).reshape(pointwise.out_channels, -1)  # (C_out, M)
        return (mixing @ inner.reshape(inner.shape[0], -1)).reshape(-1, *inner.shape[1:])
    conv = module
    groups, c_in, c_out = conv.groups, conv.in_channels, conv.out_channels
    og, ig = c_out // groups, c_in // groups
    kernel = conv.weight.shape[2:]
    w = conv.weight.detach().double()
    if conv.transposed:  # (C_in, C_out/g, *k) -> (C_out, C_in/g, *k), group by group
        w = w.reshape(groups, ig, og, *kernel).transpose(1, 2).reshape(c_out, ig, *kernel)
    weight = torch.zeros(c_out, c_in, *kernel, dtype=torch.float64)
    for g in range(groups):
        weight[g * og : (g + 1) * og, g * ig : (g + 1) * ig] = w[g * og : (g + 1) * og]
    return weight


def replacement_bias(replacement: nn.Module) -> torch.Tensor | None:
    last = list(replacement)[-1] if isinstance(replacement, nn.Sequential) else replacement
    return last.bias


def block_mask(c_out: int, c_in: int, groups: int, kernel: tuple[int, ...]) -> torch.Tensor:
    """1 where input group g meets output group g, else 0: the block diagonal kept by a plain grouped conv."""
    mask = torch.zeros(c_out, c_in, *kernel)
    og, ig = c_out // groups, c_in // groups
    for g in range(groups):
        mask[g * og : (g + 1) * og, g * ig : (g + 1) * ig] = 1
    return mask


def conv_macs(c_out: int, c_in: int, kernel: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """C_out * C_in * K * N * (output spatial size): MACs of a standard conv."""
    return c_out * c_in * math.prod(kernel) * out_shape[0] * math.prod(out_shape[2:])


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about a model that convert_model must leave alone."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "tensors": {k: v for k, v in model.state_dict(keep_vars=True).items()},
        "modules": [(n, type(m), m.training) for n, m in model.named_modules()],
        "params": [(n, p.requires_grad, p.dtype) for n, p in model.named_parameters()],
        "buffers": [n for n, _ in model.named_buffers()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["params"] == before["params"]
    assert after["buffers"] == before["buffers"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert after["tensors"][key] is before["tensors"][key], f"{key} was replaced"
        assert torch.equal(after["state"][key], value), f"{key} changed"
