"""The distillation losses: output loss (KL at a temperature, or relative MSE) and feature loss (relative MSE).

KL divergence with temperature for class scores (Hinton et al. 2015, "Distilling the Knowledge in a Neural
Network"); relative MSE, the MSE over the teacher's mean square, for other outputs and for the features at each
converted layer (FitNets, Romero et al. 2015). The mean squares (`Scales`) are measured once per run on the
validation inputs, so that every term is of order 1 whatever the scale of the model's activations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from convert.errors import ConvertError
from convert.surgery.verify import tensors_of

__all__ = ["Scales", "feature_loss", "float_leaves", "output_loss", "output_loss_kinds"]


@dataclasses.dataclass
class Scales:
    """The losses' units: the teacher's mean squares on the validation inputs (1.0 where they are 0)."""

    outputs: list[float]  # per floating point output tensor
    features: dict[str, float]  # per converted layer with a feature site


def output_loss_kinds(output: Any, loss: str) -> list[str]:
    """Per floating point output tensor: "kl" or "mse", for `loss` auto, kl or mse.

    Raises:
        ConvertError: when the output has no floating point tensor, or `loss` kl meets an output without a
            class dimension.
    """
    leaves = float_leaves(output)
    if not leaves:
        raise ConvertError("the model's output holds no floating point tensor to match: distillation needs one")
    if loss == "mse":
        return ["mse"] * len(leaves)
    if loss == "kl":
        if any(t.dim() < 2 or t.shape[1] < 2 for t in leaves):
            shapes = ", ".join("x".join(map(str, t.shape)) for t in leaves)
            raise ConvertError(
                f"loss kl needs class scores in dim 1 of every output (shapes: {shapes}): use `loss`=mse"
            )
        return ["kl"] * len(leaves)
    return ["kl" if t.dim() == 2 and t.shape[1] >= 2 else "mse" for t in leaves]


def float_leaves(output: Any) -> list[torch.Tensor]:
    """The floating point tensors of a model's output, in order (what the output loss compares)."""
    return [t for t in tensors_of(output) if t.is_floating_point()]


def output_loss(
    output: Any, target: Any, kinds: Sequence[str], scales: Sequence[float], temperature: float
) -> torch.Tensor:
    """Mean over output tensors of: KL(teacher || student) at `temperature` (times T^2, per sample and
    position), or MSE / the teacher's mean square."""
    terms = []
    for kind, out, ref, scale in zip(kinds, float_leaves(output), float_leaves(target), scales, strict=True):
        out, ref = out.float(), ref.float()
        if kind == "kl":
            positions = out.numel() // out.shape[1]
            log_p = F.log_softmax(out / temperature, dim=1)
            log_q = F.log_softmax(ref / temperature, dim=1)
            terms.append(F.kl_div(log_p, log_q, reduction="sum", log_target=True) * temperature**2 / positions)
        else:
            terms.append(F.mse_loss(out, ref) / scale)
    return torch.stack(terms).mean()


def feature_loss(
    student: dict[str, list[torch.Tensor]], teacher: dict[str, list[torch.Tensor]], scales: dict[str, float]
) -> torch.Tensor | None:
    """Mean over converted layers (and their call sites) of MSE / the teacher's mean square there; None where no
    layer has a feature site."""
    terms = [
        F.mse_loss(out.float(), ref.float()) / scales[name]
        for name, refs in teacher.items()
        for out, ref in zip(student[name], refs, strict=True)
    ]
    return torch.stack(terms).mean() if terms else None
