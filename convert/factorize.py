"""Grouped low-rank factorization of a convolution weight by truncated SVD: pure tensor math, no graphs.

A standard conv weight W of shape (C_out, C_in, *k) with its input channels split into G groups becomes a
grouped conv (G groups, r filters each, same kernel) followed by a 1x1 conv. For group g, the matrix
M_g = W[:, group g] of shape (C_out, (C_in/G)*K) is approximated by its rank-r truncated SVD
U_r S_r V_r^T: the grouped filters are sqrt(S_r) V_r^T, the pointwise columns U_r sqrt(S_r). Exact when
r >= min(C_out, (C_in/G)*K); otherwise the best rank-r approximation of each group (Eckart-Young).
G = C_in is the depthwise-separable case (depth multiplier r).
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class Factors:
    """Weights of the replacement convs and how far their composition is from the original."""

    first: torch.Tensor  # (G*r, C_in/G, *k): grouped (or depthwise) conv weight
    pointwise: torch.Tensor | None  # (C_out, G*r, 1, ...): 1x1 conv weight; None for the plain grouped form
    rel_error: float  # ||W - W_hat||_F / ||W||_F of the composed weight


def full_rank(out_channels: int, in_channels: int, kernel_numel: int, groups: int) -> int:
    """The smallest rank at which the grouped low-rank form is exact."""
    return min(out_channels, (in_channels // groups) * kernel_numel)


def _group_matrices(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_out, C_in, *k) -> (G, C_out, (C_in/G)*K), in float32 at least (float64 stays float64).

    float32 keeps full-rank reconstruction within ~1e-6 relative and is 5-20x faster than a float64 SVD
    on the large groups of ResNet-50's 1x1 and 3x3 convs (benchmarks/bench_convert.py).
    """
    c_out = weight.shape[0]
    dtype = torch.promote_types(weight.dtype, torch.float32)
    return weight.detach().to(dtype).reshape(c_out, groups, -1).permute(1, 0, 2)


def singular_values(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Singular values of each group's matrix, shape (G, min(C_out, (C_in/G)*K)), descending."""
    return torch.linalg.svdvals(_group_matrices(weight, groups))


def rank_for_energy(svals: torch.Tensor, energy: float) -> int:
    """Smallest r whose kept energy sum(S[:r]^2)/sum(S^2), averaged over the groups, is at least `energy`."""
    power = svals.double().square()  # (G, m); float64: in float32 a tail below ~1e-7 of the energy rounds away
    total = power.sum(dim=1, keepdim=True)
    kept = torch.where(total > 0, power.cumsum(dim=1) / total.clamp_min(1e-300), torch.ones_like(power))
    mean_kept = kept.mean(dim=0)  # (m,)
    reached = (mean_kept >= energy - 1e-12).nonzero()
    return int(reached[0]) + 1 if len(reached) else svals.shape[1]


def truncation_error(svals: torch.Tensor, rank: int) -> float:
    """Relative Frobenius error of keeping `rank` singular values per group: what `low_rank` will report."""
    power = svals.double().square()
    total = float(power.sum())
    return math.sqrt(float(power[:, rank:].sum()) / total) if total > 0 else 0.0


def group_svd(weight: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of each group's matrix: (G, C_out, m), (G, m), (G, m, (C_in/G)*K); `low_rank` takes it to
    factor at several ranks from one SVD."""
    return torch.linalg.svd(_group_matrices(weight, groups), full_matrices=False)


def low_rank(
    weight: torch.Tensor,
    groups: int,
    rank: int,
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Factors:
    """Factor a conv weight into a grouped conv (`groups` groups, `rank` filters each) and a 1x1 conv.

    Args:
        weight: (C_out, C_in, *k) weight of a standard conv; C_in must be divisible by `groups`.
        groups: number of input-channel groups G (C_in for depthwise-separable).
        rank: filters per group r, at most `full_rank(...)`.
        svd: `group_svd(weight, groups)`, when already computed.

    Returns:
        Factors with `first` of shape (G*r, C_in/G, *k) and `pointwise` of shape (C_out, G*r, 1, ...),
        in the weight's dtype and device.
    """
    c_out, c_in, *kernel = weight.shape
    if c_in % groups:
        raise ValueError(f"groups={groups} does not divide the {c_in} input channels")
    limit = full_rank(c_out, c_in, math.prod(kernel), groups)
    if not 1 <= rank <= limit:
        raise ValueError(f"rank={rank} is outside 1..{limit} for a weight of shape {tuple(weight.shape)}")
    u, s, vh = svd if svd is not None else group_svd(weight, groups)
    # u: (G, C_out, m), s: (G, m), vh: (G, m, (C_in/G)*K)
    root = s[:, :rank].sqrt()  # (G, r)
    first = (root.unsqueeze(2) * vh[:, :rank]).reshape(groups * rank, c_in // groups, *kernel)
    pointwise = (u[:, :, :rank] * root.unsqueeze(1)).permute(1, 0, 2).reshape(c_out, groups * rank)
    pointwise = pointwise.reshape(c_out, groups * rank, *([1] * len(kernel)))
    return Factors(_like(first, weight), _like(pointwise, weight), truncation_error(s, rank))


def block_diagonal(weight: torch.Tensor, groups: int) -> Factors:
    """Keep W's block diagonal: input group g feeds only output group g, as in a plain grouped conv.

    Lossy unless W is block-diagonal already. Needs `groups` to divide both C_in and C_out.
    """
    c_out, c_in, *kernel = weight.shape
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both {c_in} input and {c_out} output channels")
    blocks = weight.detach().reshape(groups, c_out // groups, groups, c_in // groups, *kernel)
    index = torch.arange(groups, device=weight.device)
    first = blocks[index, :, index].reshape(c_out, c_in // groups, *kernel)  # (C_out, C_in/G, *k)
    total = float(weight.detach().double().square().sum())
    off = blocks.double().clone()
    off[index, :, index] = 0  # the dropped part itself: total - kept would lose small errors to rounding
    rel_error = math.sqrt(float(off.square().sum()) / total) if total > 0 else 0.0
    return Factors(first.clone(), None, rel_error)


def _like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return tensor.to(dtype=reference.dtype, device=reference.device).contiguous()
