"""Activation-aware low-rank factors: the SVD of each group's weight whitened by its input patch covariance.

Zhang et al. 2015, "Accelerating Very Deep Convolutional Networks for Classification and Detection": with
S_h = L_h L_h^T the covariance of group h's input patches and D = diag(1 / std of each output channel) (a conv's
output is normalised next, by BatchNorm, so an error counts relative to its channel's spread),
D M_h L_h = U S V^T gives filters S_r^(1/2) V_r^T L_h^-1 and 1x1 columns D^-1 U_r S_r^(1/2): the rank-r factors
with the least output error of each group alone under these inputs, exact at full rank whatever S_h and D.
`fit.py` starts its refits from them; `--to auto` measures its candidates' errors with them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from convert.surgery.factorize import Factors, group_factors, group_matrices
from convert.surgery.find import ConvLayer, ConvSpec
from convert.surgery.plan import LayerPlan, standard_weight
from convert.surgery.rewrite import build_replacement, plain_conv

__all__ = [
    "SCALE_FLOOR",
    "WHITEN_DAMPING",
    "Whitening",
    "channel_scale",
    "patch_extractor",
    "rows",
    "whitened_factors",
    "whitened_low_rank",
    "whitening",
]

WHITEN_DAMPING = 1e-3  # added to each patch covariance's diagonal, relative to its mean: a well-posed Cholesky
SCALE_FLOOR = 1e-3  # an output channel's std is at least this share of the largest (one that never varies does
# not dominate the weighting)


@dataclasses.dataclass(frozen=True)
class Whitening:
    """What whitens one layer's weight for `groups` groups: its input patch covariance per group, and the spread of
    its output channels."""

    covariance: torch.Tensor  # (G, (C_in/G)*K, (C_in/G)*K), float64
    scale: torch.Tensor  # (C_out,): the std of each output channel on the inputs


def whitening(layer: ConvLayer, groups: int, inputs: Sequence[torch.Tensor]) -> Whitening:
    """The `Whitening` of `layer` for `groups` groups from its inputs (batches of the layer's input), in float64."""
    spec = layer.spec
    original = plain_conv(spec, layer.weight.detach(), None if layer.bias is None else layer.bias.detach()).eval()
    extractor = patch_extractor(spec, inputs[0])
    m = spec.in_channels // groups * math.prod(spec.kernel)
    covariance = torch.zeros(groups, m, m, dtype=torch.float64, device=inputs[0].device)
    count, total, power = 0, 0.0, 0.0
    with torch.no_grad():
        for x in inputs:
            patches, y = rows(extractor(x), groups), rows(original.to(x)(x), 1)[0]
            covariance.baddbmm_(patches.mT, patches)
            count, total, power = count + y.shape[0], total + y.sum(0), power + y.square().sum(0)
    return Whitening(covariance, channel_scale(count, total, power))


def channel_scale(count: int, total: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """The std of each output channel from its values' count, sum and sum of squares, at least SCALE_FLOOR of the
    largest."""
    std = (power / count - (total / count).square()).clamp_min(1e-12).sqrt()
    return std.clamp_min(SCALE_FLOOR * std.max())


def whitened_low_rank(layer: ConvLayer, plan: LayerPlan, whitening: Whitening) -> Factors:
    """The rank-`plan.rank` factors of each group of `layer` whitened by `whitening` (see the module docstring)."""
    weight = standard_weight(layer).detach()
    return whitened_factors(weight, plan.groups, plan.rank, layer.spec.groups, whitening)


def whitened_factors(weight: torch.Tensor, groups: int, rank: int, outer_groups: int, whitening: Whitening) -> Factors:
    """Rank-`rank` factors of each group's matrix M_h that minimise ||D (M_h - M_h') L_h|| (module docstring)."""
    matrices = group_matrices(weight, groups, outer_groups).double()  # (G, C_out/g0, m)
    spread = whitening.scale.to(matrices).reshape(outer_groups, 1, -1).expand(-1, groups // outer_groups, -1)
    spread = spread.reshape(groups, -1, 1)  # (G, C_out/g0, 1): each group's output channels
    covariance = whitening.covariance.to(matrices)
    mean = covariance.diagonal(dim1=1, dim2=2).mean(dim=1)  # (G,)
    damping = torch.where(mean > 0, WHITEN_DAMPING * mean, torch.ones_like(mean))  # a silent group: plain SVD
    eye = torch.eye(covariance.shape[1], dtype=covariance.dtype, device=covariance.device)
    chol = torch.linalg.cholesky(covariance + damping[:, None, None] * eye)  # (G, m, m), lower
    u, s, vh = torch.linalg.svd(matrices / spread @ chol, full_matrices=False)
    root = s[:, :rank].sqrt()  # (G, r)
    columns = spread * u[:, :, :rank] * root[:, None, :]  # (G, C_out/g0, r)
    # filters @ L = the whitened filters: solve X L = S_r^(1/2) V_r^T for X
    filters = torch.linalg.solve_triangular(chol, root[:, :, None] * vh[:, :rank], upper=False, left=False)
    approximation = columns @ filters
    error = float((approximation - matrices).norm() / matrices.norm()) if float(matrices.norm()) > 0 else 0.0
    return group_factors(columns, filters, weight, outer_groups, error)


def patch_extractor(spec: ConvSpec, like: torch.Tensor) -> nn.Module:
    """A depthwise conv of the layer's form with one output channel per (input channel, kernel offset): output
    channel c*K + j at position p is what the conv multiplies by its weight [:, c, j] there (a transposed conv's
    too), so the output is the layer's patches in `group_matrices`' layout."""
    k = math.prod(spec.kernel)
    unit = torch.eye(k, dtype=like.dtype, device=like.device).reshape(k, 1, *spec.kernel)
    unit = unit.repeat(spec.in_channels, *([1] * (1 + len(spec.kernel))))  # (C_in*K, 1, *k)
    return build_replacement(spec, Factors(unit, None, 0.0), None, False, False).eval()


def rows(t: torch.Tensor, blocks: int) -> torch.Tensor:
    """(N, C, *spatial) -> (blocks, N*P, C/blocks) in float64: one row per position, channels by block."""
    n, c = t.shape[:2]
    return t.reshape(n, blocks, c // blocks, -1).permute(1, 0, 3, 2).reshape(blocks, -1, c // blocks).double()
