"""Run a model without side effects, in a given mode, and compare outputs: the reference every stage checks against."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

__all__ = ["compare", "in_mode", "output_rel_error", "run_model", "SEED", "tensors_of"]

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


def run_model(model: nn.Module, inputs: Sequence[torch.Tensor], training: bool | None = None) -> Any:
    """Forward pass with a fixed RNG seed, no autograd, and buffers left as they were; in train or eval mode when
    `training` says (every module's own mode is put back afterwards), else in the modes the modules are in."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), _buffers_restored(model), in_mode(model, training):
        torch.manual_seed(SEED)
        return model(*inputs)


@contextlib.contextmanager
def in_mode(model: nn.Module, training: bool | None) -> Iterator[nn.Module]:
    """`model` with every module in train (True) or eval (False) mode, each module's own mode restored after;
    None leaves the modes as they are."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def compare(original: nn.Module, converted: nn.Module, inputs: Sequence[torch.Tensor], training: bool) -> float:
    """`output_rel_error` of `converted` against `original`, both run in the same mode with the same seed.

    Raises:
        Exception: what `original` raises in that mode (e.g. BatchNorm on one value per channel in train mode).
    """
    reference = run_model(original, inputs, training)
    return output_rel_error(reference, run_model(converted, inputs, training))


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
