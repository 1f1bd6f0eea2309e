"""Grouped low-rank factorization of a convolution weight by truncated SVD: pure tensor math, no graphs.

A standard conv weight W of shape (C_out, C_in, *k) with its input channels split into G groups becomes a
grouped conv (G groups, r filters each, same kernel) followed by a 1x1 conv. For group g, the matrix
M_g = W[:, group g] of shape (C_out, (C_in/G)*K) is approximated by its rank-r truncated SVD
U_r S_r V_r^T: the grouped filters are sqrt(S_r) V_r^T, the pointwise columns U_r sqrt(S_r). Exact when
r >= min(C_out, (C_in/G)*K); otherwise the best rank-r approximation of each group (Eckart-Young). At
full rank no SVD is needed: M_g = I @ M_g or M_g @ I, exact to the last bit.
G = C_in is the depthwise-separable case (depth multiplier r).

A conv that is already grouped (`outer_groups` g0 > 1, weight (C_out, C_in/g0, *k)) factorizes group by group:
each of its groups is a standard conv from C_in/g0 to C_out/g0 channels, the new groups G subdivide its
groups (g0 divides G), and the 1x1 conv keeps g0 groups. A transposed conv (weight (C_in, C_out/g0, *k))
is linear in its kernel just as a conv is: in the standard layout of `standard_layout` the same factors give
a depthwise (or grouped) transposed conv, then the 1x1 conv (`transposed_layout` for the first weight).
"""

from __future__ import annotations

import dataclasses
import math

import torch

__all__ = [
    "block_diagonal",
    "compose",
    "dense",
    "Factors",
    "full_rank",
    "group_factors",
    "group_matrices",
    "group_svd",
    "low_rank",
    "rank_for_energy",
    "singular_values",
    "standard_layout",
    "transposed_layout",
    "truncation_error",
]


@dataclasses.dataclass(frozen=True)
class Factors:
    """Weights of the replacement convs and how far their composition is from the original."""

    first: torch.Tensor  # (G*r, C_in/G, *k): grouped (or depthwise) conv weight
    pointwise: torch.Tensor | None  # (C_out, G*r/g0, 1, ...): 1x1 conv weight; None for the plain grouped form
    rel_error: float  # ||W - W_hat||_F / ||W||_F of the composed weight


def full_rank(out_channels: int, in_channels: int, kernel_numel: int, groups: int, outer_groups: int = 1) -> int:
    """The smallest rank at which the grouped low-rank form is exact (`outer_groups`: the conv's own groups)."""
    return min(out_channels // outer_groups, (in_channels // groups) * kernel_numel)


def standard_layout(weight: torch.Tensor, transposed: bool, groups: int) -> torch.Tensor:
    """A conv weight in the standard layout (C_out, C_in/g0, *k); a transposed conv's is (C_in, C_out/g0, *k).

    For the transposed conv with g0 groups, entry [o, i] of group g maps input channel g*C_in/g0 + i to output
    channel o: the same linear map, in the layout the factorization reads.
    """
    if not transposed:
        return weight
    c_in, c_out_per, *kernel = weight.shape
    blocks = weight.reshape(groups, c_in // groups, c_out_per, -1).transpose(1, 2)  # (g0, C_out/g0, C_in/g0, K)
    return blocks.reshape(groups * c_out_per, c_in // groups, *kernel)


def transposed_layout(first: torch.Tensor, groups: int) -> torch.Tensor:
    """The first factor (G*r, C_in/G, *k) as the weight of a transposed conv with G groups: (C_in, r, *k)."""
    channels, per_group, *kernel = first.shape
    rank = channels // groups
    blocks = first.reshape(groups, rank, per_group, -1).transpose(1, 2)  # (G, C_in/G, r, K)
    return blocks.reshape(groups * per_group, rank, *kernel).contiguous()


def group_matrices(weight: torch.Tensor, groups: int, outer_groups: int = 1) -> torch.Tensor:
    """(C_out, C_in/g0, *k) -> (G, C_out/g0, (C_in/G)*K), in float32 at least (float64 stays float64).

    Group h of the G lies in the conv's own group h // (G/g0). float32 keeps full-rank reconstruction within
    ~1e-6 relative and is 5-20x faster than a float64 SVD on the large groups of ResNet-50's 1x1 and 3x3
    convs (benchmarks/bench_convert.py).
    """
    c_out = weight.shape[0]
    dtype = torch.promote_types(weight.dtype, torch.float32)
    blocks = weight.detach().to(dtype).reshape(outer_groups, c_out // outer_groups, groups // outer_groups, -1)
    return blocks.permute(0, 2, 1, 3).reshape(groups, c_out // outer_groups, -1)


def singular_values(weight: torch.Tensor, groups: int, outer_groups: int = 1) -> torch.Tensor:
    """Singular values of each group's matrix, shape (G, min(C_out/g0, (C_in/G)*K)), descending."""
    return torch.linalg.svdvals(group_matrices(weight, groups, outer_groups))


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
    return torch.linalg.svd(group_matrices(weight, groups), full_matrices=False)


def low_rank(
    weight: torch.Tensor,
    groups: int,
    rank: int,
    outer_groups: int = 1,
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> Factors:
    """Factor a conv weight into a grouped conv (`groups` groups, `rank` filters each) and a 1x1 conv.

    Args:
        weight: (C_out, C_in/g0, *k) weight of a conv with g0 = `outer_groups` groups (1: a standard conv).
        groups: number of input-channel groups G (C_in for depthwise-separable); g0 must divide G, G C_in.
        rank: filters per group r, at most `full_rank(...)`.
        outer_groups: the conv's own groups g0; the 1x1 conv gets as many.
        svd: `group_svd(weight, groups)` when already computed (a standard conv, below full rank).

    Returns:
        Factors with `first` of shape (G*r, C_in/G, *k) and `pointwise` of shape (C_out, G*r/g0, 1, ...),
        in the weight's dtype and device.
    """
    c_out, c_in_per, *kernel = weight.shape
    c_in = c_in_per * outer_groups
    if c_in % groups or groups % outer_groups or c_out % outer_groups:
        raise ValueError(
            f"groups={groups} does not divide the {c_in} input channels, or is not a multiple of the conv's own "
            f"{outer_groups} groups"
        )
    limit = full_rank(c_out, c_in, math.prod(kernel), groups, outer_groups)
    if not 1 <= rank <= limit:
        raise ValueError(f"rank={rank} is outside 1..{limit} for a weight of shape {tuple(weight.shape)}")
    matrices = group_matrices(weight, groups, outer_groups)  # (G, C_out/g0, (C_in/G)*K)
    if rank == limit:
        columns, filters = _exact_split(matrices)
        error = 0.0
    else:
        u, s, vh = svd if svd is not None else torch.linalg.svd(matrices, full_matrices=False)
        # u: (G, C_out/g0, m), s: (G, m), vh: (G, m, (C_in/G)*K)
        root = s[:, :rank].sqrt()  # (G, r)
        columns, filters = u[:, :, :rank] * root.unsqueeze(1), root.unsqueeze(2) * vh[:, :rank]
        error = truncation_error(s, rank)
    return group_factors(columns, filters, weight, outer_groups, error)


def group_factors(
    columns: torch.Tensor, filters: torch.Tensor, weight: torch.Tensor, outer_groups: int, rel_error: float
) -> Factors:
    """The conv weights of per-group factors M_h ~ columns[h] @ filters[h] of `weight` (G groups, rank r).

    Args:
        columns: (G, C_out/g0, r), group h's columns of the 1x1 conv.
        filters: (G, r, (C_in/G)*K), group h's filters of the grouped conv, in `group_matrices`' layout.
        weight: the conv weight they factor, (C_out, C_in/g0, *k): its shape, dtype and device.
        outer_groups: the conv's own groups g0.
        rel_error: what `Factors.rel_error` records.
    """
    groups, _, rank = columns.shape
    c_out, c_in_per, *kernel = weight.shape
    c_in = c_in_per * outer_groups
    first = filters.reshape(groups * rank, c_in // groups, *kernel)
    inner = groups // outer_groups
    pointwise = columns.reshape(outer_groups, inner, c_out // outer_groups, rank).permute(0, 2, 1, 3)
    pointwise = pointwise.reshape(c_out, inner * rank, *([1] * len(kernel)))  # (C_out, G*r/g0, 1, ...)
    return Factors(_like(first, weight), _like(pointwise, weight), rel_error)


def _exact_split(matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(columns, filters) with columns @ filters == M exactly, for each group's matrix M (C_out/g0, m), at
    full rank and without an SVD: I @ M when C_out/g0 <= m (the filters are M's rows, the 1x1 conv copies
    them), else M @ I (the filters are the m unit kernels, the 1x1 conv holds M). The factors are M's own
    entries, so the composition carries none of the rounding error of a float32 SVD (~1e-6 per layer, which
    deep models amplify).
    """
    groups, rows, cols = matrices.shape
    identity = torch.eye(min(rows, cols), dtype=matrices.dtype, device=matrices.device).expand(groups, -1, -1)
    return (identity, matrices) if rows <= cols else (matrices, identity)


def block_diagonal(weight: torch.Tensor, groups: int, outer_groups: int = 1) -> Factors:
    """Keep W's block diagonal: input group g feeds only output group g, as in a plain grouped conv.

    Lossy unless W is block-diagonal already. Needs `groups` to divide both C_in and C_out. A conv with
    `outer_groups` groups of its own is first written as the standard conv it equals (zeros off its blocks).
    """
    weight = dense(weight, outer_groups)
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


def compose(first: torch.Tensor, pointwise: torch.Tensor, groups: int, outer_groups: int = 1) -> torch.Tensor:
    """The dense weight (C_out, C_in/g0, *k) that a grouped conv `first` (G*r, C_in/G, *k) then the 1x1 conv
    `pointwise` (C_out, G*r/g0, 1, ...) compute: the inverse of `low_rank`'s layout (exact at full rank)."""
    c_out, kernel = pointwise.shape[0], first.shape[2:]
    rank, per_group, inner = first.shape[0] // groups, first.shape[1], groups // outer_groups
    columns = pointwise.reshape(outer_groups, c_out // outer_groups, inner, rank)  # [a, o, h, j]
    filters = first.reshape(outer_groups, inner, rank, -1)  # [a, h, j, (c, k)]
    dense = torch.einsum("aohj,ahjx->aohx", columns, filters)  # (g0, C_out/g0, G/g0, (C_in/G)*K)
    return dense.reshape(c_out, inner * per_group, *kernel)


def _like(tensor: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return tensor.to(dtype=reference.dtype, device=reference.device).contiguous()


def dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_out, C_in/g, *k) of a conv with g groups -> the (C_out, C_in, *k) weight of the standard conv it equals."""
    if groups == 1:
        return weight
    c_out, per, *kernel = weight.shape
    full = weight.new_zeros(c_out, per * groups, *kernel)
    for g, block in enumerate(weight.detach().chunk(groups)):
        full[g * (c_out // groups) : (g + 1) * (c_out // groups), g * per : (g + 1) * per] = block
    return full
