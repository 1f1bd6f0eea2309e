"""The factors of one conv fitted to its real inputs: whitened SVD, then ridge least-squares refits.

With z the layer's inputs in the model converted so far and y the original conv's outputs in the original model
(Zhang et al. 2015, "Accelerating Very Deep Convolutional Networks for Classification and Detection": asymmetric
reconstruction), the grouped low-rank form is fitted in steps:

1. per group h, the covariance of z's patches S_h = sum_p z_hp z_hp^T ((C_in/G)*K square) whitens the weight before
   the SVD (`whiten.py`): the rank-r factor with the least output error of each group alone under these inputs,
   exact at full rank, each output channel's error relative to its spread (D = diag(1 / std));
2. the 1x1 conv (and its bias) is refit by least squares on the first conv's outputs F: min ||P F + b - y||^2, each
   unknown pulled towards its start by a small ridge (directions the inputs never explore keep it, and full rank
   stays exact). This absorbs the correlations across groups and the error arriving from earlier layers;
3. where the first conv has few enough weights (JOINT_UNKNOWNS), it is refit too, all groups at once, given the 1x1
   conv (the same D-weighted least squares, from the full patch covariance), then the 1x1 conv again, ALTERNATIONS
   times: the groups' filters stop repeating each other (correlated input channels, e.g. RGB).

The plain grouped form (no 1x1 conv) refits its grouped weight the same way, pulled towards W's block diagonal.
Patches come from `whiten.patch_extractor`, in the layer's own form, so that every conv form reads its patches the
way it computes. Everything is accumulated batch by
batch in float64: moments, never the patches of all inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from convert.surgery.factorize import Factors, block_diagonal, compose, dense
from convert.surgery.find import ConvLayer, ConvSpec
from convert.surgery.plan import LayerPlan, standard_weight, svd_factors
from convert.surgery.rewrite import build_replacement, plain_conv
from convert.surgery.whiten import Whitening, channel_scale, patch_extractor, rows, whitened_factors

__all__ = ["ALTERNATIONS", "Fit", "JOINT_UNKNOWNS", "LayerInputs", "RIDGE", "fit_layer", "unknowns"]

RIDGE = 1e-3  # each refit unknown's pull towards its starting value, relative to its own Gram diagonal
JOINT_UNKNOWNS = 1536  # the first conv is refit (step 3) when it has at most this many weights: C_in * r * K
ALTERNATIONS = 10  # step 3's refits of the first conv, each followed by one of the 1x1 conv
_FLOOR = 1e-3  # every damping is at least this share of the mean diagonal (an input that barely varies stays put)
_CHUNK_ELEMENTS = 1 << 23  # patches (or features) held at once: 64 MiB in float64

LayerInputs = Sequence[tuple[torch.Tensor, torch.Tensor]]  # per batch and call site: (z, x)


@dataclasses.dataclass(frozen=True)
class Fit:
    """The fitted factors of one layer and what they gain on the calibration inputs."""

    factors: Factors | None  # None: keep the weight-SVD factors (`note` says why)
    bias: torch.Tensor | None  # of the last conv (None when the conv has none)
    before: float  # the layer's output rel. error on the calibration inputs, with the weight-SVD factors
    after: float  # the same with `factors` (`before` when kept)
    note: str | None = None  # why the weight-SVD factors were kept


def unknowns(spec: ConvSpec, plan: LayerPlan, bias: bool) -> int:
    """The most unknowns of one least-squares problem of the fit: the positions it needs at least."""
    patch = spec.in_channels // plan.groups * math.prod(spec.kernel)
    if not plan.pointwise:
        return patch + bias
    return max(patch, plan.groups * plan.rank // spec.groups + bias)


def fit_layer(layer: ConvLayer, plan: LayerPlan, inputs: LayerInputs) -> Fit:
    """Fit the factors of `layer` under `plan` to its calibration inputs.

    Args:
        layer: the conv (its spec, weight and bias).
        plan: its form.
        inputs: per batch and call site, (z, x): the layer's input in the model converted so far, and in the
            original model (the targets are the original conv's outputs on x).

    Returns:
        The fitted factors, or None with the reason when there are fewer positions than unknowns.
    """
    spec, bias = layer.spec, None if layer.bias is None else layer.bias.detach()
    original = plain_conv(spec, layer.weight.detach(), bias).eval()
    svd = build_replacement(spec, svd_factors(layer, plan), bias, False, False).eval()
    positions = sum(z.shape[0] * math.prod(_out_shape(original, z)[2:]) for z, _ in inputs)
    needed = unknowns(spec, plan, bias is not None)
    if positions < needed:
        before = _error(svd, original, inputs)
        why = (
            f"calibration: kept the SVD factors: {positions} positions in the calibration inputs for {needed} "
            "unknowns (give more `samples`)"
        )
        return Fit(None, None, before, before, why)
    weight = standard_weight(layer).detach()
    fitted = (_fit_low_rank if plan.pointwise else _fit_grouped)(weight, bias, spec, plan, original, inputs)
    factors, new_bias = fitted
    module = build_replacement(spec, factors, new_bias, False, False).eval()
    return Fit(factors, new_bias, _error(svd, original, inputs), _error(module, original, inputs))


def _fit_low_rank(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    plan: LayerPlan,
    original: nn.Module,
    inputs: LayerInputs,
) -> tuple[Factors, torch.Tensor | None]:
    """Steps 1-3 of the module docstring for the grouped low-rank form."""
    groups, outer, rank, c_out = plan.groups, spec.groups, plan.rank, spec.out_channels
    patch = spec.in_channels * math.prod(spec.kernel)  # U = C_in * K
    joint = spec.in_channels * rank * math.prod(spec.kernel) <= JOINT_UNKNOWNS
    extractor = patch_extractor(spec, inputs[0][0])
    # joint: the full patch covariance and patch-output moments (a constant feature for the bias); else per group
    moments = _Normal(1, patch, c_out, True) if joint else _Normal(groups, patch // groups, 0, False)
    count, total, power = 0, 0.0, 0.0  # of the outputs y: positions, sum and sum of squares per channel
    for z, x in _chunks(inputs, patch + c_out):
        with torch.no_grad():
            y = rows(original(x), 1)  # (1, rows, C_out)
            moments.add(rows(extractor(z), 1 if joint else groups), y if joint else None)
            count, total, power = count + y.shape[1], total + y[0].sum(0), power + y[0].square().sum(0)
    scale = channel_scale(count, total, power)  # the std of each output channel
    weights = scale.square().reciprocal()
    covariance = _group_blocks(moments.gram[0, :patch, :patch], groups) if joint else moments.gram
    start = whitened_factors(weight, groups, rank, outer, Whitening(covariance, scale))
    first, pointwise = start.first.double(), start.pointwise.double().reshape(c_out, -1)
    new_bias = None if bias is None else bias.double()
    if joint:
        pointwise, new_bias = _refit_pointwise(moments, first, pointwise, new_bias, groups, outer)
        for _ in range(ALTERNATIONS):
            first = _refit_first(moments, first, pointwise, new_bias, weights, groups, outer)
            pointwise, new_bias = _refit_pointwise(moments, first, pointwise, new_bias, groups, outer)
    else:
        features = _Normal(outer, groups * rank // outer, c_out // outer, bias is not None)
        module = build_replacement(spec, start, bias, False, False).eval()
        for z, x in _chunks(inputs, groups * rank + c_out):
            with torch.no_grad():
                features.add(rows(module[0](z), outer), rows(original(x), outer))
        pointwise, new_bias = _solve_pointwise(features, pointwise, new_bias, outer)
    pointwise = pointwise.reshape(start.pointwise.shape)
    error = _rel(compose(first, pointwise, groups, outer), weight)
    factors = Factors(first.to(weight.dtype), pointwise.to(weight.dtype), error)
    return factors, None if new_bias is None else new_bias.to(weight.dtype)


def _fit_grouped(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: ConvSpec,
    plan: LayerPlan,
    original: nn.Module,
    inputs: LayerInputs,
) -> tuple[Factors, torch.Tensor | None]:
    """The plain grouped conv refit: group h's outputs from group h's patches, pulled towards W's block diagonal."""
    groups, kernel = plan.groups, spec.kernel
    patch = spec.in_channels // groups * math.prod(kernel)
    extractor = patch_extractor(spec, inputs[0][0])
    normal = _Normal(groups, patch, spec.out_channels // groups, bias is not None)
    for z, x in _chunks(inputs, spec.in_channels * math.prod(kernel) + spec.out_channels):
        with torch.no_grad():
            normal.add(rows(extractor(z), groups), rows(original(x), groups))
    start = block_diagonal(weight, groups, spec.groups).first  # (C_out, C_in/G, *k)
    prior = start.reshape(groups, spec.out_channels // groups, patch).double()  # (G, C_out/G, (C_in/G)*K)
    if bias is not None:
        prior = torch.cat([prior, bias.double().reshape(groups, -1, 1)], dim=2)
    solution = normal.solve(prior.mT).mT
    first = solution[:, :, :patch].reshape(start.shape)
    new_bias = None if bias is None else solution[:, :, -1].reshape(-1).to(bias.dtype)
    error = _rel(dense(first, groups), dense(weight.double(), spec.groups))
    return Factors(first.to(weight.dtype), None, error), new_bias


def _solve_pointwise(
    features: _Normal, pointwise: torch.Tensor, bias: torch.Tensor | None, outer: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The 1x1 conv (C_out, G*r/g0) and bias from the normal equations of its g0 blocks, pulled towards these."""
    c_out = pointwise.shape[0]
    prior = pointwise.reshape(outer, c_out // outer, -1)  # (g0, C_out/g0, G*r/g0)
    if bias is not None:
        prior = torch.cat([prior, bias.reshape(outer, -1, 1)], dim=2)
    solution = features.solve(prior.mT).mT  # (g0, C_out/g0, G*r/g0 [+ 1])
    width = pointwise.shape[1]
    return solution[:, :, :width].reshape(c_out, width), None if bias is None else solution[:, :, -1].reshape(-1)


def _refit_pointwise(
    moments: _Normal, first: torch.Tensor, pointwise: torch.Tensor, bias: torch.Tensor | None, groups: int, outer: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Step 2 from the full moments: the first conv's outputs F = A z have moments A S A^T, A E (A block-diagonal)."""
    lift = _lift(first, groups)  # (G*r + 1, U + 1): F and the constant from the patches and the constant
    gram, cross = lift @ moments.gram[0] @ lift.T, lift @ moments.cross[0]  # (G*r + 1, G*r + 1), (G*r + 1, C_out)
    width, c_out = pointwise.shape[1], pointwise.shape[0]
    blocks = torch.arange(outer).repeat_interleave(width)  # the outer group of each feature
    size = width + (bias is not None)
    features = _Normal(outer, width, c_out // outer, bias is not None)
    for a in range(outer):
        keep = torch.cat([(blocks == a).nonzero()[:, 0], torch.tensor([len(blocks)])])[:size]
        outs = slice(a * c_out // outer, (a + 1) * c_out // outer)
        features.gram[a], features.cross[a] = gram[keep][:, keep], cross[keep, outs]
    return _solve_pointwise(features, pointwise, bias, outer)


def _refit_first(
    moments: _Normal,
    first: torch.Tensor,
    pointwise: torch.Tensor,
    bias: torch.Tensor | None,
    weights: torch.Tensor,
    groups: int,
    outer: int,
) -> torch.Tensor:
    """Step 3: the first conv's weights A (G*r, C_in/G, *k) given the 1x1 conv P: y - b = P A z is linear in A, with
    normal matrix N[(h,j),(h',j')] = (P^T W P)[hj, h'j'] S[h, h'] (W: the output weights, S: patch covariance)."""
    shape = first.shape
    rank, patch = shape[0] // groups, math.prod(shape[1:])  # m = (C_in/G)*K
    dense_pointwise = _dense_pointwise(pointwise, groups, rank, outer)  # (C_out, G*r)
    w = weights.to(dense_pointwise)
    q = (dense_pointwise.T * w) @ dense_pointwise  # (G*r, G*r)
    s = moments.gram[0, :-1, :-1].reshape(groups, patch, groups, patch)  # [h, a, h', b]
    system = torch.einsum("hjgk,hagb->hjagkb", q.reshape(groups, rank, groups, rank), s)
    system = system.reshape(groups * rank * patch, -1)
    centred = moments.cross[0, :-1]  # (U, C_out): sum z y^T ...
    if bias is not None:  # ... less sum z b^T
        centred = centred - moments.gram[0, :-1, -1:] * bias[None, :]
    rhs = torch.einsum(
        "hao,ohj->hja", centred.reshape(groups, patch, -1) * w, dense_pointwise.reshape(-1, groups, rank)
    )
    normal = _Normal(1, system.shape[0], 1, False)
    normal.gram, normal.cross = system[None], rhs.reshape(1, -1, 1)
    return normal.solve(first.reshape(1, -1, 1)).reshape(shape)


def _lift(first: torch.Tensor, groups: int) -> torch.Tensor:
    """The first conv as a matrix from patches (and a constant) to its outputs (and the constant): (G*r+1, U+1)."""
    rank, patch = first.shape[0] // groups, math.prod(first.shape[1:])
    blocks = first.reshape(groups, rank, patch)
    lift = torch.zeros(groups * rank + 1, groups * patch + 1, dtype=first.dtype, device=first.device)
    for h in range(groups):
        lift[h * rank : (h + 1) * rank, h * patch : (h + 1) * patch] = blocks[h]
    lift[-1, -1] = 1.0
    return lift


def _dense_pointwise(pointwise: torch.Tensor, groups: int, rank: int, outer: int) -> torch.Tensor:
    """The 1x1 conv (C_out, G*r/g0) of g0 groups as the dense (C_out, G*r) map it computes."""
    c_out, width = pointwise.shape
    full = pointwise.new_zeros(c_out, groups * rank)
    for a in range(outer):
        full[a * c_out // outer : (a + 1) * c_out // outer, a * width : (a + 1) * width] = pointwise[
            a * c_out // outer : (a + 1) * c_out // outer
        ]
    return full


def _group_blocks(covariance: torch.Tensor, groups: int) -> torch.Tensor:
    """The G diagonal blocks (G, m, m) of a (G*m, G*m) covariance."""
    m = covariance.shape[0] // groups
    return torch.stack([covariance[h * m : (h + 1) * m, h * m : (h + 1) * m] for h in range(groups)])


class _Normal:
    """The normal equations of `blocks` least-squares problems (features [+ a constant] -> outputs), float64."""

    def __init__(self, blocks: int, features: int, outputs: int, constant: bool) -> None:
        size = features + constant
        self.constant = constant
        self.gram = torch.zeros(blocks, size, size, dtype=torch.float64)
        self.cross = torch.zeros(blocks, size, outputs, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Rows x (blocks, R, features) and their targets y (blocks, R, outputs)."""
        if self.gram.device != x.device:
            self.gram, self.cross = self.gram.to(x.device), self.cross.to(x.device)
        if self.constant:
            x = torch.cat([x, x.new_ones(*x.shape[:2], 1)], dim=2)
        self.gram.baddbmm_(x.mT, x)
        if y is not None:
            self.cross.baddbmm_(x.mT, y)

    def solve(self, prior: torch.Tensor) -> torch.Tensor:
        """argmin ||x X - y||^2 + sum_i d_i ||X_i - prior_i||^2 per block, d_i = RIDGE x the i-th Gram diagonal (at
        least _FLOOR of the mean): (blocks, features [+ 1], outputs)."""
        diagonal = self.gram.diagonal(dim1=1, dim2=2)  # (blocks, size)
        floor = _FLOOR * diagonal.mean(dim=1, keepdim=True)
        damping = RIDGE * torch.maximum(diagonal, floor)
        damping = torch.where(damping > 0, damping, torch.ones_like(damping))  # no data at all: the prior
        prior = prior.to(self.gram)
        return torch.linalg.solve(self.gram + torch.diag_embed(damping), self.cross + damping[:, :, None] * prior)


def _chunks(inputs: LayerInputs, channels: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (z, x) pairs split along the batch so that `channels` per position of each stay under _CHUNK_ELEMENTS."""
    for z, x in inputs:
        per_sample = channels * max(1, math.prod(z.shape[2:]))
        step = max(1, _CHUNK_ELEMENTS // per_sample)
        for start in range(0, z.shape[0], step):
            yield z[start : start + step], x[start : start + step]


def _error(module: nn.Module, original: nn.Module, inputs: LayerInputs) -> float:
    """||module(z) - original(x)|| / ||original(x)|| over the inputs."""
    squared = norm = 0.0
    with torch.no_grad():
        for z, x in inputs:
            y = original(x)
            squared += float((module(z) - y).double().square().sum())
            norm += float(y.double().square().sum())
    return math.sqrt(squared / norm) if norm > 0 else math.sqrt(squared)


def _out_shape(conv: nn.Module, z: torch.Tensor) -> torch.Size:
    with torch.no_grad():
        return conv(z[:1]).shape


def _rel(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    norm = float(reference.double().norm())
    return float((candidate.double() - reference.double()).norm()) / norm if norm > 0 else 0.0
