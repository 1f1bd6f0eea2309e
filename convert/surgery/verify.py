"""Run a model without side effects and compare outputs: the reference every later stage checks against."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["output_rel_error", "run_model", "SEED", "tensors_of"]

SEED = 0  # every comparison run draws the same dropout masks


@contextlib.contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    """Undo buffer updates made by a forward pass (BatchNorm running statistics in train mode)."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in saved and buf.shape == saved[name].shape:
                    buf.copy_(saved[name])


def run_model(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Any:
    """Forward pass with a fixed RNG seed, no autograd, and buffers left as they were."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _buffers_restored(model):
        torch.manual_seed(SEED)
        return model(*inputs)


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors in a (possibly nested) model output, in a stable order."""
    return [leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]


def output_rel_error(reference: Any, candidate: Any) -> float:
    """||candidate - reference|| / ||reference|| over all output tensors (Frobenius, in float64).

    Raises:
        ValueError: when the two outputs differ in structure or shape.
    """
    ref, cand = tensors_of(reference), tensors_of(candidate)
    if len(ref) != len(cand) or any(a.shape != b.shape for a, b in zip(ref, cand, strict=True)):
        raise ValueError("outputs differ in structure or shape")
    diff = sum(float((b.double() - a.double()).square().sum()) for a, b in zip(ref, cand, strict=True))
    norm = sum(float(a.double().square().sum()) for a in ref)
    if norm == 0:
        return math.sqrt(diff)
    return math.sqrt(diff / norm)
