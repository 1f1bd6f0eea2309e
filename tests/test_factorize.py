"""The factorization math on its own: exactness at full rank, the truncation error, Eckart-Young optimality,
rank choice by energy, and the block-diagonal (plain grouped) form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import block_mask, rel_error

from convert.surgery.factorize import (
    block_diagonal,
    full_rank,
    low_rank,
    rank_for_energy,
    singular_values,
    truncation_error,
)

# (weight shape, groups): tall and wide group matrices, 1-D/2-D/3-D kernels, 1x1, G = 1 .. C_in
SHAPES = [
    ((6, 4, 3, 3), 1),
    ((6, 4, 3, 3), 2),
    ((6, 4, 3, 3), 4),
    ((3, 8, 3), 1),
    ((3, 8, 3), 2),
    ((3, 8, 3), 8),
    ((20, 4, 3, 3), 4),
    ((5, 4, 1, 3, 2), 2),
    ((5, 4, 2, 2, 2), 4),
    ((8, 6, 1, 1), 1),
    ((8, 6, 1, 1), 3),
    ((2, 2, 5, 1), 2),
]


def group_matrices(weight: torch.Tensor, groups: int) -> list[torch.Tensor]:
    """Each group's (C_out, (C_in/G)*K) matrix, in float64, sliced by hand."""
    c_out, c_in = weight.shape[:2]
    per = c_in // groups
    return [weight.double()[:, g * per : (g + 1) * per].reshape(c_out, -1) for g in range(groups)]


def compose(first: torch.Tensor, pointwise: torch.Tensor, groups: int, c_in: int) -> torch.Tensor:
    """The dense (C_out, C_in, *k) weight of grouped conv `first` followed by 1x1 conv `pointwise`."""
    c_out = pointwise.shape[0]
    rank = first.shape[0] // groups
    filters = first.double().reshape(groups, rank, -1)
    mixing = pointwise.double().reshape(c_out, groups, rank).permute(1, 0, 2)
    return (mixing @ filters).permute(1, 0, 2).reshape(c_out, c_in, *first.shape[2:])


def conv(x: torch.Tensor, weight: torch.Tensor, groups: int = 1, padding: int = 0) -> torch.Tensor:
    return {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()](x, weight, groups=groups, padding=padding)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("shape", "groups"), SHAPES)
def test_low_rank_exact_at_full_rank(shape: tuple[int, ...], groups: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=dtype)
    c_out, c_in, *kernel = shape
    rank = full_rank(c_out, c_in, math.prod(kernel), groups)
    assert rank == min(c_out, c_in // groups * math.prod(kernel))

    factors = low_rank(weight, groups, rank)

    assert factors.first.shape == (groups * rank, c_in // groups, *kernel)
    assert factors.pointwise.shape == (c_out, groups * rank, *([1] * len(kernel)))
    assert factors.first.dtype == factors.pointwise.dtype == dtype
    assert factors.rel_error == 0.0
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert rel_error(compose(factors.first, factors.pointwise, groups, c_in), weight) <= tol
    # as convolutions: the grouped conv then the 1x1 conv computes the original conv
    x = torch.randn(2, c_in, *([5] * len(kernel)), dtype=dtype)
    y = conv(conv(x, factors.first, groups=groups, padding=1), factors.pointwise)
    assert rel_error(y, conv(x, weight, padding=1)) <= tol


@pytest.mark.parametrize(("shape", "groups"), SHAPES)
def test_error_equals_truncation_formula(shape: tuple[int, ...], groups: int) -> None:
    torch.manual_seed(1)
    weight = torch.randn(shape, dtype=torch.float64)
    svals = torch.stack([torch.linalg.svdvals(m) for m in group_matrices(weight, groups)])  # (G, m)
    torch.testing.assert_close(singular_values(weight, groups), svals, rtol=1e-12, atol=1e-12)
    for rank in range(1, svals.shape[1] + 1):
        factors = low_rank(weight, groups, rank)
        formula = math.sqrt(float(svals[:, rank:].square().sum() / weight.square().sum()))
        measured = rel_error(compose(factors.first, factors.pointwise, groups, shape[1]), weight)
        assert factors.rel_error == pytest.approx(formula, rel=1e-10, abs=1e-14)
        assert truncation_error(svals, rank) == pytest.approx(formula, rel=1e-10, abs=1e-14)
        assert measured == pytest.approx(formula, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(("shape", "groups"), [((6, 4, 3, 3), 1), ((6, 4, 3, 3), 2), ((7, 6, 3), 3)])
def test_eckart_young_optimal(shape: tuple[int, ...], groups: int, rank: int) -> None:
    """Per group, the error is sqrt of the discarded energy: the least of any rank-r approximation."""
    torch.manual_seed(2)
    weight = torch.randn(shape, dtype=torch.float64)
    factors = low_rank(weight, groups, rank)
    approx = group_matrices(compose(factors.first, factors.pointwise, groups, shape[1]), groups)
    generator = torch.Generator().manual_seed(3)
    for m, m_hat in zip(group_matrices(weight, groups), approx, strict=True):
        s = torch.linalg.svdvals(m)
        optimum = float(s[rank:].square().sum().sqrt())
        assert float((m - m_hat).norm()) == pytest.approx(optimum, rel=1e-10, abs=1e-12)
        assert int(torch.linalg.matrix_rank(m_hat)) <= rank
        # no other rank-r matrix does better: best approximations within random rank-r row or column spaces,
        # and the optimum nudged
        for _ in range(20):
            basis = torch.linalg.qr(torch.randn(m.shape[1], rank, dtype=torch.float64, generator=generator))[0]
            assert float((m - m @ basis @ basis.T).norm()) >= optimum - 1e-12
            basis = torch.linalg.qr(torch.randn(m.shape[0], rank, dtype=torch.float64, generator=generator))[0]
            assert float((m - basis @ basis.T @ m).norm()) >= optimum - 1e-12
            u, v = torch.linalg.svd(m_hat)[0][:, :rank], torch.linalg.svd(m_hat)[2][:rank]
            nudged = (
                (u + 1e-3 * torch.randn(u.shape, dtype=torch.float64, generator=generator)) @ (u.T @ m_hat @ v.T) @ v
            )
            assert float((m - nudged).norm()) >= optimum - 1e-12


def test_low_rank_layout_matches_grouped_conv_channel_order() -> None:
    """Output channel g*r + j of the grouped conv is filter j of group g; pointwise column g*r + j mixes it."""
    torch.manual_seed(4)
    weight = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    factors = low_rank(weight, 3, 2)
    for g, m in enumerate(group_matrices(weight, 3)):
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        block = factors.pointwise[:, 2 * g : 2 * g + 2, 0, 0] @ factors.first[2 * g : 2 * g + 2].reshape(2, -1)
        torch.testing.assert_close(block, (u[:, :2] * s[:2]) @ vh[:2], rtol=1e-12, atol=1e-12)


def test_low_rank_rejects_bad_arguments() -> None:
    weight = torch.randn(6, 4, 3, 3)
    with pytest.raises(ValueError, match="divide"):
        low_rank(weight, 3, 1)
    with pytest.raises(ValueError, match="rank=0"):
        low_rank(weight, 2, 0)
    with pytest.raises(ValueError, match="rank=7"):
        low_rank(weight, 2, 7)  # full rank min(6, 2*9) = 6
    low_rank(weight, 2, 6)


def test_low_rank_leaves_weight_alone_and_detaches() -> None:
    weight = torch.randn(6, 4, 3, 3, requires_grad=True)
    before = weight.detach().clone()
    factors = low_rank(weight, 4, 2)
    assert torch.equal(weight.detach(), before)
    assert not factors.first.requires_grad and not factors.pointwise.requires_grad
    assert factors.first.is_contiguous() and factors.pointwise.is_contiguous()


def test_low_rank_zero_weight() -> None:
    factors = low_rank(torch.zeros(6, 4, 3, 3), 2, 1)
    assert factors.rel_error == 0.0
    assert torch.equal(compose(factors.first, factors.pointwise, 2, 4), torch.zeros(6, 4, 3, 3, dtype=torch.float64))


def test_singular_values_shape_and_order() -> None:
    torch.manual_seed(5)
    svals = singular_values(torch.randn(5, 6, 3, dtype=torch.float64), 3)
    assert svals.shape == (3, 5) and svals.dtype == torch.float64  # min(5, 2*3)
    assert bool((svals[:, :-1] >= svals[:, 1:]).all())


# ---------------------------------------------------------------------------------------------------------------
# rank_for_energy and truncation_error


def test_rank_for_energy_basic_and_boundaries() -> None:
    svals = torch.tensor([[4.0, 3.0]], dtype=torch.float64)  # kept energy 0.64, 1.0
    assert rank_for_energy(svals, 1e-9) == 1
    assert rank_for_energy(svals, 0.64) == 1  # at the threshold exactly: enough
    assert rank_for_energy(svals, 0.64 + 1e-9) == 2
    assert rank_for_energy(svals, 1.0) == 2


def test_rank_for_energy_full_energy_is_full_rank() -> None:
    torch.manual_seed(6)
    svals = singular_values(torch.randn(6, 4, 3, 3, dtype=torch.float64), 2)
    assert rank_for_energy(svals, 1.0) == svals.shape[1] == 6


def test_rank_for_energy_trailing_zeros() -> None:
    svals = torch.tensor([[3.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    assert rank_for_energy(svals, 1.0) == 2  # all the energy is in the first two


def test_rank_for_energy_zero_weight() -> None:
    svals = torch.zeros(2, 3, dtype=torch.float64)
    assert rank_for_energy(svals, 1.0) == 1
    assert rank_for_energy(svals, 0.5) == 1


def test_rank_for_energy_averages_over_groups() -> None:
    svals = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # kept at r=1: 1.0 and 0.5 -> 0.75
    assert rank_for_energy(svals, 0.75) == 1
    assert rank_for_energy(svals, 0.76) == 2
    # a zero group counts as fully kept
    svals = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert rank_for_energy(svals, 0.75) == 1
    assert rank_for_energy(svals, 0.8) == 2


def test_rank_for_energy_float32_small_tail() -> None:
    """Energy 1.0 keeps a tail of 1e-8 of the energy, also when the singular values are float32."""
    for dtype in (torch.float64, torch.float32):
        svals = torch.tensor([[1.0, 1e-4]], dtype=dtype)
        assert rank_for_energy(svals, 1.0) == 2, dtype
        assert rank_for_energy(svals, 0.9999) == 1, dtype


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_rank_for_energy_matches_hand_computation(groups: int) -> None:
    torch.manual_seed(7)
    weight = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    svals = singular_values(weight, groups)
    power = svals.square()
    kept = (power.cumsum(1) / power.sum(1, keepdim=True)).mean(0)
    previous = 1
    for energy in torch.linspace(0.05, 1.0, 40).tolist():
        rank = rank_for_energy(svals, energy)
        assert float(kept[rank - 1]) >= energy - 1e-12
        assert rank == 1 or float(kept[rank - 2]) < energy
        assert rank >= previous  # more energy never needs fewer filters
        previous = rank
        assert rank_for_energy(svals.float(), energy) == rank  # float32 singular values agree here


def test_truncation_error_edges() -> None:
    svals = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    assert truncation_error(svals, 2) == 0.0
    assert truncation_error(svals, 1) == pytest.approx(4.0 / 5.0)
    assert truncation_error(torch.zeros(2, 3), 1) == 0.0


def test_full_rank() -> None:
    assert full_rank(6, 4, 9, 4) == 6  # separable: min(C_out, K)
    assert full_rank(20, 4, 9, 4) == 9
    assert full_rank(6, 4, 9, 1) == 6
    assert full_rank(64, 64, 1, 4) == 16  # 1x1: C_in / G
    assert full_rank(3, 8, 3, 8) == 3


# ---------------------------------------------------------------------------------------------------------------
# block_diagonal


@pytest.mark.parametrize(
    ("shape", "groups"), [((6, 4, 3, 3), 2), ((8, 8, 3), 4), ((4, 6, 1, 2, 3), 2), ((6, 4, 3, 3), 1)]
)
def test_block_diagonal_is_the_masked_conv(shape: tuple[int, ...], groups: int) -> None:
    torch.manual_seed(8)
    weight = torch.randn(shape, dtype=torch.float64)
    c_out, c_in, *kernel = shape
    mask = block_mask(c_out, c_in, groups, tuple(kernel)).double()

    factors = block_diagonal(weight, groups)

    assert factors.pointwise is None
    assert factors.first.shape == (c_out, c_in // groups, *kernel) and factors.first.dtype == weight.dtype
    x = torch.randn(2, c_in, *([4] * len(kernel)), dtype=torch.float64)
    torch.testing.assert_close(conv(x, factors.first, groups=groups), conv(x, weight * mask), rtol=1e-12, atol=1e-12)
    expected = float((weight - weight * mask).norm() / weight.norm())
    assert factors.rel_error == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if groups == 1:
        assert factors.rel_error == 0.0 and torch.equal(factors.first, weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_diagonal_weight_exact(dtype: torch.dtype) -> None:
    torch.manual_seed(9)
    weight = torch.randn(6, 4, 3, 3, dtype=dtype) * block_mask(6, 4, 2, (3, 3)).to(dtype)

    factors = block_diagonal(weight, 2)

    assert factors.rel_error == 0.0 and factors.first.dtype == dtype
    x = torch.randn(2, 4, 5, 5, dtype=dtype)
    torch.testing.assert_close(F.conv2d(x, factors.first, groups=2), F.conv2d(x, weight))


def test_block_diagonal_small_off_block_error_is_accurate() -> None:
    """An off-block part of 1e-9 of the weight is reported as such, not lost to rounding."""
    torch.manual_seed(10)
    mask = block_mask(6, 4, 2, (3, 3)).double()
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64) * mask
    off = torch.randn(6, 4, 3, 3, dtype=torch.float64) * (1 - mask)
    weight = weight + 1e-9 * off * weight.norm() / off.norm()
    factors = block_diagonal(weight, 2)
    expected = float((weight * (1 - mask)).norm() / weight.norm())
    assert factors.rel_error == pytest.approx(expected, rel=1e-6)


def test_block_diagonal_does_not_alias_the_weight() -> None:
    weight = torch.randn(4, 4, 3, 3)
    factors = block_diagonal(weight, 1)
    factors.first.zero_()
    assert weight.abs().sum() > 0


def test_block_diagonal_rejects_groups_not_dividing() -> None:
    with pytest.raises(ValueError, match="divide"):
        block_diagonal(torch.randn(6, 4, 3, 3), 3)  # divides C_out only
    with pytest.raises(ValueError, match="divide"):
        block_diagonal(torch.randn(3, 4, 3, 3), 2)  # divides C_in only


@pytest.mark.parametrize(("shape", "groups"), SHAPES)
def test_full_rank_factors_are_the_weight_itself(shape: tuple[int, ...], groups: int) -> None:
    """At full rank no SVD rounding: one factor is an identity, the other holds W's own entries, bit for bit."""
    torch.manual_seed(0)
    weight = torch.randn(shape)
    c_out, c_in, *kernel = shape
    factors = low_rank(weight, groups, full_rank(c_out, c_in, math.prod(kernel), groups))
    assert torch.equal(compose(factors.first, factors.pointwise, groups, c_in), weight.double())
    assert factors.rel_error == 0.0
