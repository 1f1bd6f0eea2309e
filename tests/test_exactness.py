"""Exactness of the surgery: at full rank the converted model computes what the original computes.

Every configuration of a conv (dims, stride, padding, dilation, padding mode, bias, kernel shape), both targets,
and all three trace paths (fx, torch.export, module walk), compared against the original model's output. Plus
what must be skipped, how ranks are chosen, the report's figures, and what the result keeps (mode, dtype,
trainability, pickling) and leaves alone (the original model).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    FUNCTIONAL_REWRITTEN,
    PATHS,
    TOL,
    TOL64,
    assert_outputs_close,
    assert_same_function,
    assert_unchanged,
    block_mask,
    conv_macs,
    conv_modules,
    converted_rows,
    count_params,
    dense_weight,
    forward,
    rel_error,
    replacement_bias,
    skipped_rows,
    snapshot,
)
from torch import fx, nn

from convert import ConvertConfig, ConvertError, convert_model
from convert.surgery.modules import FactorizedConv

pytestmark = pytest.mark.filterwarnings(
    "ignore:Using padding='same' with even kernel:UserWarning",
    "ignore:Converting a tensor with requires_grad=True to a scalar:UserWarning",
)

FULL = ConvertConfig(rank="full")


def grouped(groups: int = 2, **kwargs) -> ConvertConfig:
    return ConvertConfig(target="grouped", groups=groups, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Models. Top-level classes, so that module-walk results (instances of these classes) pickle.


def gate(path: str, x: torch.Tensor) -> torch.Tensor:
    """Python control flow that makes `path` the first trace path that works for the model."""
    if path == "export":
        if x.shape[-1] > 1:  # shape-dependent: symbolic_trace cannot branch on a Proxy; torch.export can
            x = x * 1.5
    elif path == "module-walk":
        if float(x.mean()) > -1e9:  # value-dependent: defeats torch.export too
            x = x * 1.5
    else:
        assert path == "fx"
    return x


class PathNet(nn.Module):
    """`layers` in an nn.Sequential, behind the control flow of `path`."""

    def __init__(self, path: str, *layers: nn.Module) -> None:
        super().__init__()
        self.path = path
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(gate(self.path, x))


class FuncNet(nn.Module):
    """Functional convs (weight a parameter with a bias parameter; weight a buffer) and a module conv."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w = nn.Parameter(torch.randn(6, 4, 3, 3))
        self.b = nn.Parameter(torch.randn(6))
        self.register_buffer("wb", torch.randn(5, 6, 2, 3))
        self.conv = nn.Conv2d(5, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        x = F.conv2d(x, self.w, self.b, stride=(2, 1), padding=1)
        x = F.conv2d(x, self.wb, padding="same")
        return self.conv(torch.relu(x))


class Func1d3dNet(nn.Module):
    """F.conv1d and F.conv3d (keyword arguments, a bias), two inputs, a dict output."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w1 = nn.Parameter(torch.randn(6, 4, 3))
        self.register_buffer("w3", torch.randn(5, 4, 3, 2, 3))
        self.register_buffer("b3", torch.randn(5))

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        a = gate(self.path, a)
        return {
            "a": F.conv1d(a, self.w1, stride=2, dilation=2, padding=1),
            "v": F.conv3d(v, weight=self.w3, bias=self.b3, padding=(1, 0, 1), stride=(1, 2, 1)),
        }


class SharedNet(nn.Module):
    """One conv module called at two sites."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        return self.conv(torch.relu(self.conv(x)))


class SharedFuncNet(nn.Module):
    """One functional weight used by two conv calls with the same hyper-parameters."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.w = nn.Parameter(torch.randn(4, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        return F.conv2d(torch.relu(F.conv2d(x, self.w, padding=1)), self.w, padding=1)


class Block(nn.Module):
    """A custom residual block: conv-BN-ReLU, conv-BN, skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class CustomNet(nn.Module):
    """A custom module: stem, residual block, pooled head, with BatchNorm."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.block = Block(4)
        self.head = nn.Conv2d(4, 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        return self.head(self.block(self.stem(x))).mean(dim=(2, 3))


class StdConv2d(nn.Conv2d):
    """Weight standardization in forward (like timm's StdConv2d): not a standard conv."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-6)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StdConvInner2d(nn.Conv2d):
    """Weight standardization in `_conv_forward` (forward inherited): not a standard conv either."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        weight = (weight - weight.mean(dim=(1, 2, 3), keepdim=True)) * 2.0
        return super()._conv_forward(x, weight, bias)


class TransposedNet(nn.Module):
    """A ConvTranspose2d module and an F.conv_transpose2d call."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2)
        self.wt = nn.Parameter(torch.randn(6, 3, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        return F.conv_transpose2d(self.up(x), self.wt, stride=2)


class GroupedFuncNet(nn.Module):
    """Functional grouped and depthwise convs."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.wg = nn.Parameter(torch.randn(8, 2, 3, 3))
        self.wd = nn.Parameter(torch.randn(8, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        return F.conv2d(F.conv2d(x, self.wg, padding=1, groups=2), self.wd, padding=1, groups=8)


class NamedNet(nn.Module):
    """Convs with distinct names and channel counts, for the include/exclude/min_channels filters."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(gate(self.path, x))))


# ---------------------------------------------------------------------------------------------------------------
# The conv matrix: every configuration, both targets, every path.

SHAPES = {1: (2, 4, 11), 2: (2, 4, 9, 10), 3: (2, 4, 6, 7, 6)}

CONV_CASES = {
    "1d-k3": lambda: nn.Conv1d(4, 6, 3),
    "1d-stride2-pad2-dil2": lambda: nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2),
    "1d-same-k4": lambda: nn.Conv1d(4, 6, 4, padding="same"),
    "1d-valid-k5-nobias": lambda: nn.Conv1d(4, 6, 5, padding="valid", bias=False),
    "1d-circular": lambda: nn.Conv1d(4, 6, 3, padding=1, padding_mode="circular"),
    "1d-reflect-same-k2": lambda: nn.Conv1d(4, 6, 2, padding="same", padding_mode="reflect"),
    "2d-k3-pad1": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "2d-stride(2,1)-pad(1,0)": lambda: nn.Conv2d(4, 6, 3, stride=(2, 1), padding=(1, 0)),
    "2d-stride2-k5-pad2": lambda: nn.Conv2d(4, 6, 5, stride=2, padding=2),
    "2d-kernel(1,3)": lambda: nn.Conv2d(4, 6, (1, 3), padding=(0, 1)),
    "2d-kernel(3,2)-nobias": lambda: nn.Conv2d(4, 6, (3, 2), bias=False),
    "2d-same-k3": lambda: nn.Conv2d(4, 6, 3, padding="same"),
    "2d-same-k4": lambda: nn.Conv2d(4, 6, 4, padding="same"),
    "2d-same-k(2,3)-dil(2,1)": lambda: nn.Conv2d(4, 6, (2, 3), padding="same", dilation=(2, 1)),
    "2d-valid": lambda: nn.Conv2d(4, 6, 3, padding="valid"),
    "2d-dil2-pad2": lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2),
    "2d-zeros-explicit": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="zeros"),
    "2d-reflect": lambda: nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    "2d-replicate-pad(2,1)": lambda: nn.Conv2d(4, 6, 3, padding=(2, 1), padding_mode="replicate"),
    "2d-circular-stride2": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="circular"),
    "2d-reflect-same-k(2,3)-nobias": lambda: nn.Conv2d(
        4, 6, (2, 3), padding="same", padding_mode="reflect", bias=False
    ),
    "2d-wide-out": lambda: nn.Conv2d(4, 20, 3, padding=1),  # full rank < C_out: exact without keeping C_out
    "2d-narrow-out": lambda: nn.Conv2d(4, 2, 3),  # full rank = C_out < K
    "3d-k3": lambda: nn.Conv3d(4, 6, 3, padding=1),
    "3d-stride(2,1,1)-pad(1,0,1)": lambda: nn.Conv3d(4, 6, 3, stride=(2, 1, 1), padding=(1, 0, 1)),
    "3d-kernel(1,3,2)-nobias": lambda: nn.Conv3d(4, 6, (1, 3, 2), bias=False),
    "3d-same-k(2,3,2)-replicate": lambda: nn.Conv3d(4, 6, (2, 3, 2), padding="same", padding_mode="replicate"),
    "3d-circular-dil2": lambda: nn.Conv3d(4, 6, 3, padding=2, dilation=2, padding_mode="circular"),
    "3d-valid-k2": lambda: nn.Conv3d(4, 6, 2, padding="valid"),
    # grouped already (1 < groups < C_in): converted group by group with include_grouped
    "1d-groups2-reflect": lambda: nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect", groups=2),
    "2d-groups2": lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    "2d-groups2-stride2-dil2-nobias": lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=False),
    "2d-groups2-same-k(2,3)-circular": lambda: nn.Conv2d(
        4, 6, (2, 3), padding="same", padding_mode="circular", groups=2
    ),
    "2d-groups2-replicate-wide-out": lambda: nn.Conv2d(4, 20, 3, padding=1, padding_mode="replicate", groups=2),
    "3d-groups2-valid": lambda: nn.Conv3d(4, 6, (1, 3, 2), padding="valid", groups=2),
    # transposed: always the separable form (depthwise transposed + 1x1); zeros is their only padding mode
    "1d-T-k3": lambda: nn.ConvTranspose1d(4, 6, 3),
    "1d-T-stride2-pad1-outpad1": lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1),
    "1d-T-dil2-groups2-nobias": lambda: nn.ConvTranspose1d(4, 6, 3, dilation=2, groups=2, bias=False),
    "2d-T-k3-pad1": lambda: nn.ConvTranspose2d(4, 6, 3, padding=1),
    "2d-T-stride2-k2": lambda: nn.ConvTranspose2d(4, 6, 2, stride=2),  # U-Net upsampling
    "2d-T-stride(2,3)-k(3,4)-outpad(1,2)": lambda: nn.ConvTranspose2d(
        4, 6, (3, 4), stride=(2, 3), padding=(1, 0), output_padding=(1, 2)
    ),
    "2d-T-stride2-dil2-outpad1-groups2": lambda: nn.ConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1, dilation=2, groups=2
    ),
    "2d-T-wide-out-nobias": lambda: nn.ConvTranspose2d(4, 20, 3, bias=False),
    "3d-T-stride(1,2,2)-pad1-outpad(0,1,1)": lambda: nn.ConvTranspose3d(
        4, 6, 3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 1)
    ),
    "3d-T-k(2,1,3)-groups2": lambda: nn.ConvTranspose3d(4, 6, (2, 1, 3), groups=2),
}

TARGETS = {
    "separable": ConvertConfig(rank="full", include_grouped=True),
    "grouped": grouped(2, rank="full", include_grouped=True),
}


def expected_groups_and_full_rank(conv: nn.modules.conv._ConvNd, target: str) -> tuple[int, int]:
    """Groups of the first conv, and the rank at which the form is exact: min(C_out/g0, C_in/G * K)."""
    groups = conv.in_channels if target == "separable" or conv.transposed else 2
    return groups, min(conv.out_channels // conv.groups, conv.in_channels // groups * math.prod(conv.kernel_size))


def check_replacement(replacement: nn.Module, conv: nn.modules.conv._ConvNd, groups: int, rank: int, path: str) -> None:
    """Sequential(depthwise|grouped, pointwise) with the conv's hyper-parameters and its exact dense weight.

    On the export path, padding modes other than zeros are separate pad ops before the conv, and "valid" is
    lowered to zero padding, so only the padding's effect (checked by the outputs) is the same there.
    """
    assert isinstance(replacement, nn.Sequential)
    first, pointwise = list(replacement)
    assert type(first) is type(conv) and not pointwise.transposed
    assert isinstance(pointwise, (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(conv.kernel_size) - 1])
    assert first.groups == groups and first.out_channels == groups * rank
    attrs = ["in_channels", "kernel_size", "stride", "dilation", "output_padding"]
    if path != "export":
        attrs += ["padding", "padding_mode"]
    for attr in attrs:
        assert getattr(first, attr) == getattr(conv, attr), attr
    assert pointwise.out_channels == conv.out_channels and pointwise.kernel_size == (1,) * len(conv.kernel_size)
    assert pointwise.groups == conv.groups
    assert rel_error(dense_weight(replacement), dense_weight(conv)) <= TOL
    bias = replacement_bias(replacement)
    assert (bias is None) == (conv.bias is None)
    if bias is not None:
        assert torch.equal(bias, conv.bias)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_exact_at_full_rank(case: str, target: str, path: str) -> None:
    torch.manual_seed(0)
    conv = CONV_CASES[case]()
    model = PathNet(path, conv, nn.ReLU()).eval()
    x = torch.randn(SHAPES[len(conv.kernel_size)])

    result = convert_model(model, x, TARGETS[target])

    assert result.report.trace == path
    (layer,) = result.report.layers
    assert layer.name == "body.0" and layer.status == "converted", layer.reason
    groups, full = expected_groups_and_full_rank(conv, target)
    assert (layer.groups, layer.rank, layer.full_rank, layer.calls) == (groups, full, full, 1)
    assert_same_function(result.model, model, [x])
    assert result.report.output_rel_error <= TOL
    check_replacement(result.model.get_submodule("body.0"), conv, groups, full, path)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_bare_conv_model_exact(case: str, target: str) -> None:
    """The model is the conv itself: fx traces its forward into F.convNd (and F.pad for other padding modes); a
    transposed conv's forward checks its input's dimensions, which fx cannot, so export traces it."""
    torch.manual_seed(0)
    conv = CONV_CASES[case]().eval()
    x = torch.randn(SHAPES[len(conv.kernel_size)])

    result = convert_model(conv, x, TARGETS[target])

    assert result.report.trace == ("export" if conv.transposed else "fx")
    (layer,) = converted_rows(result.report)
    groups, full = expected_groups_and_full_rank(conv, target)
    assert (layer.groups, layer.rank) == (groups, full)
    assert_same_function(result.model, conv, [x])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_with_pointwise_exact_for_every_divisor(groups: int, path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, (2, 3), stride=(2, 1))).eval()
    x = torch.randn(2, 4, 8, 9)
    config = grouped(groups, rank="full")
    if groups == 4:  # does not divide the 6 input channels of the second conv
        config = dataclasses.replace(config, include="body.0")

    result = convert_model(model, x, config)

    assert result.report.trace == path
    for layer in converted_rows(result.report):
        conv = model.get_submodule(layer.name)
        full = min(conv.out_channels, conv.in_channels // groups * math.prod(conv.kernel_size))
        assert (layer.groups, layer.rank, layer.full_rank) == (groups, full, full)
        check_replacement(result.model.get_submodule(layer.name), conv, groups, full, path)
    assert len(converted_rows(result.report)) == (1 if groups == 4 else 2)
    assert_same_function(result.model, model, [x])


# ---------------------------------------------------------------------------------------------------------------
# Grouped without pointwise: the block diagonal of W.


@pytest.mark.parametrize("path", PATHS)
def test_grouped_without_pointwise_is_the_block_diagonal_conv(path: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=(1, 2))
    model = PathNet(path, conv).eval()
    x = torch.randn(2, 4, 7, 8)

    result = convert_model(model, x, grouped(2, pointwise=False))

    # reference: the same conv with everything off the block diagonal zeroed
    mask = block_mask(6, 4, 2, (3, 3))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.body[0].weight.mul_(mask)
    assert result.report.trace == path
    assert_same_function(result.model, reference, [x])
    (layer,) = result.report.layers
    assert (layer.status, layer.groups, layer.rank, layer.full_rank) == ("converted", 2, 3, None)
    replacement = result.model.get_submodule("body.0")
    assert isinstance(replacement, nn.Conv2d) and replacement.groups == 2
    assert torch.equal(dense_weight(replacement), (conv.weight.detach() * mask).double())
    assert torch.equal(replacement.bias, conv.bias)
    w = conv.weight.detach().double()
    assert layer.weight_rel_error == pytest.approx(float((w - w * mask).norm() / w.norm()), rel=1e-9)
    # it is not the original function (W is not block-diagonal)
    assert rel_error(forward(result.model, x), forward(model, x)) > 0.1


@pytest.mark.parametrize("path", PATHS)
def test_block_diagonal_weight_reproduced_exactly(path: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1))
    with torch.no_grad():
        conv.weight.mul_(block_mask(6, 4, 2, (1, 3, 3)))
    model = PathNet(path, conv).eval()
    x = torch.randn(2, 4, 3, 6, 5)

    result = convert_model(model, x, grouped(2, pointwise=False))

    assert result.report.trace == path
    (layer,) = result.report.layers
    assert layer.status == "converted" and layer.weight_rel_error == 0.0
    assert torch.equal(dense_weight(result.model.get_submodule("body.0")), conv.weight.detach().double())
    assert_same_function(result.model, model, [x])
    assert result.report.output_rel_error <= TOL


# ---------------------------------------------------------------------------------------------------------------
# Trace paths, functional convs, shared convs.


@pytest.mark.parametrize("path", PATHS)
def test_trace_path_module_and_functional_convs(path: str) -> None:
    torch.manual_seed(0)
    model = FuncNet(path).eval()
    x = torch.randn(2, 4, 8, 7)

    result = convert_model(model, x, FULL)

    report = result.report
    assert report.trace == path
    assert [note.split(":")[0] for note in report.trace_notes] == {
        "fx": ["rewrite"],  # the model's forward calls convs as functions: it became a graph module
        "export": ["fx"],
        "module-walk": ["fx", "export", "fx-leaves", "module-walk"],
    }[path]
    names = {layer.name for layer in converted_rows(report)}
    # functional calls are rewritten where fx traces the module that makes them (here the model itself); elsewhere
    # they stay as they are (and stay exact), and the model keeps its class
    assert names == ({"w", "wb", "conv"} if path == "fx" else {"conv"})
    skipped = {layer.name: layer.reason for layer in skipped_rows(report)}
    assert set(skipped) == ({"w", "wb"} if path == "export" else set())  # the module walk does not see them
    assert all("fx cannot trace" in reason for reason in skipped.values())
    assert isinstance(result.model, fx.GraphModule) if path == "fx" else type(result.model) is FuncNet
    for layer in converted_rows(report):
        assert layer.rank == layer.full_rank
    assert_same_function(result.model, model, [x])
    assert report.output_rel_error <= TOL


class LoopNet(nn.Module):
    """Shape-dependent control flow of another kind: a Python loop over a dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.w = nn.Parameter(torch.randn(6, 6, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.conv(x[i : i + 1]) for i in range(x.shape[0])]
        y = torch.cat(rows)
        if y.size(2) > 4:
            y = F.conv2d(y, self.w, padding=1)
        return y


def test_export_path_for_loop_over_shape() -> None:
    torch.manual_seed(0)
    model = LoopNet().eval()
    x = torch.randn(3, 4, 6, 6)

    result = convert_model(model, x, FULL)

    assert result.report.trace == "export"
    assert {layer.name: layer.calls for layer in converted_rows(result.report)} == {"conv": 3}
    (functional,) = skipped_rows(result.report)  # in the model's own forward, which fx cannot trace
    assert functional.name == "w" and "fx cannot trace" in functional.reason
    assert type(result.model) is LoopNet
    assert_same_function(result.model, model, [x])
    x5 = torch.randn(5, 4, 6, 6)  # the loop runs over another batch: nothing was fixed at the example's
    assert_same_function(result.model, model, [x5])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("path", sorted(FUNCTIONAL_REWRITTEN))
def test_functional_convs_1d_3d_two_inputs_dict_output(path: str, target: str) -> None:
    torch.manual_seed(0)
    model = Func1d3dNet(path).eval()
    inputs = [torch.randn(2, 4, 13), torch.randn(2, 4, 4, 6, 5)]

    result = convert_model(model, inputs, TARGETS[target])

    assert result.report.trace == path
    rows = {layer.name: layer for layer in result.report.layers}
    assert set(rows) == {"w1", "w3"}
    assert all(layer.status == "converted" and layer.rank == layer.full_rank for layer in rows.values())
    assert rows["w1"].op.endswith("conv1d") and rows["w3"].op.endswith("conv3d")
    out = forward(result.model, *inputs)
    assert isinstance(out, dict) and set(out) == {"a", "v"}
    assert_outputs_close(out, forward(model, *inputs))
    for name, weight in (("w1", model.w1), ("w3", model.w3)):
        assert rel_error(dense_weight(result.model.get_submodule(name)), weight) <= TOL
    assert torch.equal(replacement_bias(result.model.get_submodule("w3")), model.b3)


@pytest.mark.parametrize("path", PATHS)
def test_shared_module_converted_once(path: str) -> None:
    torch.manual_seed(0)
    model = SharedNet(path).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, FULL)

    assert result.report.trace == path
    (layer,) = result.report.layers
    assert (layer.name, layer.status, layer.calls) == ("conv", "converted", 2)
    assert layer.macs_before == 2 * conv_macs(4, 4, (3, 3), (2, 4, 6, 6))
    # one replacement: a depthwise and a pointwise conv, and nothing else
    convs = conv_modules(result.model)
    assert [name for name, _ in convs] == ["conv.depthwise", "conv.pointwise"]
    assert type(result.model) is SharedNet and isinstance(result.model.conv, FactorizedConv)
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", sorted(FUNCTIONAL_REWRITTEN))
def test_shared_functional_weight_converted_once(path: str) -> None:
    torch.manual_seed(0)
    model = SharedFuncNet(path).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, grouped(2, rank="full"))

    (layer,) = result.report.layers
    assert (layer.name, layer.status, layer.calls) == ("w", "converted", 2)
    assert len(conv_modules(result.model)) == 2
    assert [n.target for n in result.model.graph.nodes if n.op == "call_module"] == ["w", "w"]
    assert "w" not in dict(result.model.named_parameters())
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("path", PATHS)
def test_custom_module_exact(path: str, target: str) -> None:
    """A custom module (nested residual block, BatchNorm, pooling) converts exactly at full rank."""
    torch.manual_seed(0)
    model = CustomNet(path)
    x = torch.randn(4, 3, 8, 8)
    model.train()
    model(x)  # running statistics that are not the defaults
    model.eval()
    config = FULL if target == "separable" else grouped(1, rank="full")  # the stem has 3 input channels

    result = convert_model(model, x, config)

    assert result.report.trace == path
    assert {layer.name for layer in converted_rows(result.report)} == {"stem", "block.conv1", "block.conv2", "head"}
    assert all(layer.rank == layer.full_rank for layer in result.report.layers)
    assert_same_function(result.model, model, [x])
    if path == "module-walk":  # the graphs inline the custom module's forward; the walk keeps it
        assert type(result.model.get_submodule("block")) is Block


class ReadsWeight(nn.Module):
    """Reads a conv's weight outside the conv call."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        return self.conv(x) + self.conv.weight.sum()


@pytest.mark.parametrize("path", PATHS)
def test_conv_weight_read_outside_the_call(path: str) -> None:
    torch.manual_seed(0)
    model = ReadsWeight(path).eval()
    x = torch.randn(2, 4, 5, 5)

    result = convert_model(model, x, FULL)

    (layer,) = result.report.layers
    # converted on every path: the code that reads the weight reads the dense weight the replacement computes
    assert layer.status == "converted"
    assert isinstance(result.model.conv, FactorizedConv)
    torch.testing.assert_close(result.model.conv.weight, model.conv.weight, rtol=TOL, atol=TOL)
    assert_same_function(result.model, model, [x])


# ---------------------------------------------------------------------------------------------------------------
# What is skipped, and why.


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("cls", [StdConv2d, StdConvInner2d])
def test_weight_standardized_conv_skipped(cls: type[nn.Conv2d], path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, cls(4, 6, 3, padding=1)).eval()
    x = torch.randn(2, 4, 6, 7)

    result = convert_model(model, x, ConvertConfig(rank=1))  # a conversion would show at rank 1

    assert result.report.trace == path
    assert not converted_rows(result.report)
    (layer,) = result.report.layers
    assert layer.status == "skipped" and layer.reason
    assert_same_function(result.model, model, [x], tol=1e-6)
    assert result.report.output_rel_error <= 1e-6


@pytest.mark.parametrize("path", PATHS)
def test_weight_standardized_conv_skipped_next_to_standard_one(path: str) -> None:
    torch.manual_seed(0)
    std = StdConv2d(4, 6, 3, padding=1)
    model = PathNet(path, std, nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1)).eval()
    x = torch.randn(2, 4, 6, 7)

    result = convert_model(model, x, FULL)

    (converted,) = converted_rows(result.report)
    assert converted.name == "body.2"
    (skipped,) = skipped_rows(result.report)
    assert skipped.reason
    assert_same_function(result.model, model, [x])
    # the standardized conv still computes from its raw weight
    raw = [p for name, p in result.model.named_parameters() if p.shape == std.weight.shape]
    assert len(raw) == 1 and torch.equal(raw[0], std.weight)


@pytest.mark.parametrize("path", PATHS)
def test_transposed_convs_skipped_on_request(path: str) -> None:
    torch.manual_seed(0)
    model = TransposedNet(path).eval()
    x = torch.randn(2, 4, 5, 5)

    result = convert_model(model, x, ConvertConfig(rank="full", transposed="skip"))

    assert result.report.trace == path
    assert not converted_rows(result.report)
    rows = skipped_rows(result.report)
    assert len(rows) == (1 if path == "module-walk" else 2)  # the module walk does not see functional calls
    assert all("--transposed separable" in layer.reason for layer in rows)
    assert_same_function(result.model, model, [x], tol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("target", TARGETS)
def test_transposed_module_and_functional_exact(path: str, target: str) -> None:
    """A ConvTranspose2d module and an F.conv_transpose2d call become the separable form whatever the target."""
    torch.manual_seed(0)
    model = TransposedNet(path).eval()
    x = torch.randn(2, 4, 5, 5)

    result = convert_model(model, x, TARGETS[target])

    rows = {layer.name: layer for layer in result.report.layers}
    assert set(rows) == ({"up"} if path == "module-walk" else {"up", "wt"})
    converted = {name for name, row in rows.items() if row.status == "converted"}
    assert converted == ({"up", "wt"} if path in FUNCTIONAL_REWRITTEN else {"up"})
    assert all(rows[name].groups == rows[name].in_channels for name in converted)
    assert (rows["up"].rank, rows["up"].full_rank) == (6, 6)  # min(C_out, K) = min(6, 9)
    check_replacement(result.model.get_submodule("up"), model.up, 4, 6, path)
    if path in FUNCTIONAL_REWRITTEN:
        assert (rows["wt"].rank, rows["wt"].full_rank) == (3, 3)  # min(C_out=3, K=4)
        assert rel_error(dense_weight(result.model.get_submodule("wt")), model.wt.transpose(0, 1)) <= TOL
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
def test_transposed_rank_one_counts(path: str) -> None:
    """Rank 1: lossy, and its MACs are the depthwise transposed conv's per input position plus the 1x1 conv's
    per output position."""
    torch.manual_seed(0)
    model = TransposedNet(path).eval()
    x = torch.randn(2, 4, 5, 5)

    result = convert_model(model, x, ConvertConfig(rank=1))

    layer = next(row for row in result.report.layers if row.name == "up")
    assert layer.output_shape == [2, 6, 11, 11] and layer.weight_rel_error > 0.1
    assert layer.macs_before == 2 * 5 * 5 * 4 * 6 * 9  # C_in * C_out * K per input position
    assert layer.macs_after == 2 * 5 * 5 * 4 * 1 * 9 + 2 * 11 * 11 * 4 * 6
    assert layer.params_after == count_params(result.model.get_submodule("up"))
    assert rel_error(forward(result.model, x), forward(model, x)) > 1e-3


@pytest.mark.parametrize("path", PATHS)
def test_grouped_conv_grouped_target_needs_a_multiple_of_its_groups(path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Conv2d(8, 8, 3, padding=1, groups=2)).eval()
    x = torch.randn(2, 8, 6, 6)

    result = convert_model(model, x, grouped(2, rank="full", include_grouped=True))

    rows = {layer.name: layer for layer in result.report.layers}
    assert rows["body.0"].status == "skipped" and "multiple of the conv's own groups=4" in rows["body.0"].reason
    assert rows["body.1"].status == "converted" and rows["body.1"].rank == rows["body.1"].full_rank == 4
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
def test_grouped_conv_block_diagonal_without_pointwise(path: str) -> None:
    """--no-pointwise on a conv with 2 groups at G=4: the 4-block diagonal of its dense weight."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
    model = PathNet(path, conv).eval()
    x = torch.randn(2, 8, 5, 5)

    result = convert_model(model, x, grouped(4, pointwise=False, include_grouped=True))

    (layer,) = result.report.layers
    assert (layer.status, layer.groups) == ("converted", 4)
    kept = dense_weight(conv) * block_mask(8, 8, 4, (3, 3)).double()
    assert torch.equal(dense_weight(result.model.get_submodule("body.0")), kept)
    dense = dense_weight(conv)
    assert layer.weight_rel_error == pytest.approx(float((dense - kept).norm() / dense.norm()), rel=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("include_grouped", [False, True])
def test_grouped_and_depthwise_convs(path: str, include_grouped: bool) -> None:
    """Grouped convs are skipped unless include_grouped; depthwise convs always are."""
    torch.manual_seed(0)
    model = PathNet(
        path,
        nn.Conv2d(4, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 6, 3, padding=1),
    ).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, dataclasses.replace(FULL, include_grouped=include_grouped))

    rows = {layer.name: layer for layer in result.report.layers}
    if include_grouped:
        assert rows["body.0"].status == "converted" and rows["body.0"].rank == rows["body.0"].full_rank == 4
        check_replacement(result.model.get_submodule("body.0"), model.body[0], 4, 4, path)
    else:
        assert rows["body.0"].status == "skipped" and "--include-grouped" in rows["body.0"].reason
    assert rows["body.1"].status == "skipped" and "already depthwise" in rows["body.1"].reason
    assert rows["body.2"].status == "converted"
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", sorted(FUNCTIONAL_REWRITTEN))
@pytest.mark.parametrize("include_grouped", [False, True])
def test_functional_grouped_and_depthwise(path: str, include_grouped: bool) -> None:
    torch.manual_seed(0)
    model = GroupedFuncNet(path).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, dataclasses.replace(FULL, include_grouped=include_grouped))

    rows = {layer.name: layer for layer in result.report.layers}
    if include_grouped:
        assert rows["wg"].status == "converted" and (rows["wg"].groups, rows["wg"].rank) == (4, 4)
        replacement = result.model.get_submodule("wg")
        assert replacement.pointwise.groups == 2
        reference = nn.Conv2d(4, 8, 3, groups=2, bias=False)
        reference.weight = model.wg
        assert rel_error(dense_weight(replacement), dense_weight(reference)) <= TOL
    else:
        assert rows["wg"].status == "skipped" and "already grouped" in rows["wg"].reason
    assert rows["wd"].status == "skipped" and "already depthwise" in rows["wd"].reason
    assert_same_function(result.model, model, [x], tol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_pointwise_conv_skipped_for_separable_converted_for_grouped(path: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 1)
    model = PathNet(path, conv).eval()
    x = torch.randn(2, 4, 5, 5)

    separable = convert_model(model, x, FULL)
    (layer,) = separable.report.layers
    assert layer.status == "skipped" and "1x1" in layer.reason
    assert_same_function(separable.model, model, [x], tol=1e-6)

    grouped_result = convert_model(model, x, grouped(2, rank="full"))
    (layer,) = grouped_result.report.layers
    assert layer.status == "converted" and layer.rank == layer.full_rank == 2
    check_replacement(grouped_result.model.get_submodule("body.0"), conv, 2, 2, path)
    assert_same_function(grouped_result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("options", "converted", "reason_word"),
    [
        ({"include": r"^block\."}, {"block.0", "block.2"}, "include"),
        ({"include": "head"}, {"head"}, "include"),
        ({"exclude": "head|stem"}, {"block.0", "block.2"}, "exclude"),
        ({"include": "block|head", "exclude": r"\.2$"}, {"block.0", "head"}, "clude"),
        ({"min_channels": 4}, {"block.0", "block.2", "head"}, "min"),
        ({"min_channels": 5}, {"block.0", "block.2"}, "min"),
        ({"min_channels": 9}, set(), "min"),
    ],
)
def test_filters(options: dict, converted: set[str], reason_word: str, path: str) -> None:
    torch.manual_seed(0)
    model = NamedNet(path).eval()
    x = torch.randn(2, 3, 6, 6)

    result = convert_model(model, x, ConvertConfig(rank="full", **options))

    assert result.report.trace == path
    assert {layer.name for layer in converted_rows(result.report)} == converted
    for layer in skipped_rows(result.report):
        assert reason_word in layer.reason
    assert {layer.name for layer in result.report.layers} == {"stem", "block.0", "block.2", "head"}
    for name, module in conv_modules(model):
        replacement = result.model.get_submodule(name)
        assert isinstance(replacement, nn.Sequential) == (name in converted)
        if name not in converted:
            assert torch.equal(replacement.weight, module.weight)
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
def test_groups_not_dividing_input_channels_skipped(path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, grouped(4, rank="full"))

    rows = {layer.name: layer for layer in result.report.layers}
    assert rows["body.0"].status == "converted" and rows["body.0"].groups == 4
    assert rows["body.2"].status == "skipped"
    assert "groups=4" in rows["body.2"].reason and "6 input channels" in rows["body.2"].reason
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
def test_groups_not_dividing_output_channels_skipped_without_pointwise(path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, grouped(2, pointwise=False))

    rows = {layer.name: layer for layer in result.report.layers}
    assert rows["body.0"].status == "converted"
    assert rows["body.2"].status == "skipped"
    assert "groups=2" in rows["body.2"].reason and "3 output channels" in rows["body.2"].reason
    assert torch.equal(result.model.get_submodule("body.2").weight, model.body[2].weight)
    # 2 fits the inputs of body.2 but not its outputs: alone, it is an error
    with pytest.raises(ConvertError, match="groups`=2 fits no layer"):
        convert_model(model, x, grouped(2, pointwise=False, exclude="body.0"))


@pytest.mark.parametrize("path", PATHS)
def test_groups_fitting_no_layer_raise(path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    before = snapshot(model)
    with pytest.raises(ConvertError, match="5"):
        convert_model(model, torch.randn(2, 4, 6, 6), grouped(5))
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------------------------
# Rank choice.


def group_svals(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Singular values of each group's (C_out, (C_in/G)*K) matrix, computed here by hand: (G, m)."""
    c_out, c_in = weight.shape[:2]
    per_group = c_in // groups
    mats = [weight.detach().double()[:, g * per_group : (g + 1) * per_group].reshape(c_out, -1) for g in range(groups)]
    return torch.stack([torch.linalg.svdvals(m) for m in mats])


@pytest.mark.parametrize("path", PATHS)
def test_default_rank_separable_is_one(path: str) -> None:
    torch.manual_seed(0)
    model = CustomNet(path).eval()
    x = torch.randn(2, 3, 8, 8)

    result = convert_model(model, x, ConvertConfig())

    rows = converted_rows(result.report)
    assert {layer.name for layer in rows} == {"stem", "block.conv1", "block.conv2", "head"}
    for layer in rows:
        assert layer.rank == 1 and layer.reason is None
        conv = model.get_submodule(layer.name)
        first = result.model.get_submodule(layer.name)[0]
        assert first.groups == first.in_channels == first.out_channels == conv.in_channels
        svals = group_svals(conv.weight, conv.in_channels)
        expected = float((svals[:, 1:].square().sum() / svals.square().sum()).sqrt())
        assert layer.weight_rel_error == pytest.approx(expected, rel=1e-6)  # float32 weights: float32 SVD


@pytest.mark.parametrize("path", PATHS)
def test_default_rank_grouped_keeps_out_channels(path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 2, 3)).eval()
    x = torch.randn(2, 4, 7, 7)

    result = convert_model(model, x, grouped(2))

    rows = {layer.name: layer for layer in result.report.layers}
    assert (rows["body.0"].rank, rows["body.0"].full_rank) == (3, 6)  # C_out / G
    assert (rows["body.2"].rank, rows["body.2"].full_rank) == (3, 3)  # C_out / G is full rank here: exact
    assert (rows["body.3"].rank, rows["body.3"].full_rank) == (1, 2)
    assert all(layer.reason is None for layer in rows.values())
    assert result.model.get_submodule("body.0")[0].out_channels == 6  # G * r = C_out
    assert rows["body.0"].weight_rel_error > 0.1
    assert rows["body.2"].weight_rel_error == 0.0
    replacement = result.model.get_submodule("body.2")
    assert rel_error(dense_weight(replacement), model.body[2].weight) <= TOL


@pytest.mark.parametrize("path", PATHS)
def test_default_grouped_rank_clamped_when_above_full(path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 8, 1)).eval()  # C_out / G = 4 > full rank min(8, 2) = 2
    x = torch.randn(2, 4, 5, 5)

    result = convert_model(model, x, grouped(2))

    (layer,) = result.report.layers
    assert (layer.rank, layer.full_rank) == (2, 2) and "clamped" in layer.reason
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("target", TARGETS)
def test_rank_above_full_clamped(target: str, path: str) -> None:
    torch.manual_seed(0)
    model = PathNet(path, nn.Conv2d(4, 6, (2, 3), padding=1)).eval()
    x = torch.randn(2, 4, 6, 6)

    result = convert_model(model, x, dataclasses.replace(TARGETS[target], rank=50))

    (layer,) = result.report.layers
    full = 6  # separable: min(6, 2*3); grouped: min(6, 2*2*3)
    assert layer.rank == layer.full_rank == full
    assert "clamped" in layer.reason and "50" in layer.reason and str(full) in layer.reason
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("target", TARGETS)
def test_rank_below_full_kept_without_note(target: str) -> None:
    torch.manual_seed(0)
    model = PathNet("fx", nn.Conv2d(4, 6, 3, padding=1)).eval()
    result = convert_model(model, torch.randn(1, 4, 5, 5), dataclasses.replace(TARGETS[target], rank=2))
    (layer,) = result.report.layers
    assert layer.rank == 2 and layer.reason is None
    assert result.model.get_submodule("body.0")[0].out_channels == 2 * layer.groups


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("energy", [0.3, 0.6, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("target", TARGETS)
def test_energy_rank_is_smallest_meeting_threshold(target: str, energy: float, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = PathNet("fx", nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 8, (3, 2))).eval().to(dtype)
    x = torch.randn(2, 4, 6, 6, dtype=dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-6  # float32 weights get a float32 SVD
    config = dataclasses.replace(TARGETS[target], rank=None, energy=energy)

    result = convert_model(model, x, config)

    for layer in result.report.layers:
        assert layer.status == "converted"
        weight = model.get_submodule(layer.name).weight
        groups = weight.shape[1] if target == "separable" else 2
        svals = group_svals(weight, groups)
        power = svals.square()
        kept = (power.cumsum(dim=1) / power.sum(dim=1, keepdim=True)).mean(dim=0)  # (m,) averaged over groups
        ranks = [r for r in range(1, svals.shape[1] + 1) if float(kept[r - 1]) >= energy - 1e-12]
        assert layer.rank == ranks[0], (layer.name, kept.tolist())
        assert float(kept[layer.rank - 1]) >= energy - 1e-12
        if layer.rank > 1:
            assert float(kept[layer.rank - 2]) < energy
        expected_error = float((power[:, layer.rank :].sum() / power.sum()).sqrt())
        assert layer.weight_rel_error == pytest.approx(expected_error, rel=tol, abs=1e-12)
    if energy == 1.0:
        assert all(layer.rank == layer.full_rank for layer in result.report.layers)
        assert_same_function(result.model, model, [x], tol=TOL64 if dtype == torch.float64 else TOL)


# ---------------------------------------------------------------------------------------------------------------
# Report figures against the real modules.


class ReportNet(nn.Module):
    """Convs of every dimension, a skipped depthwise conv, a shared conv, and a functional conv."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.c1 = nn.Conv1d(4, 6, 3, stride=2)
        self.c2 = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0))
        self.dw = nn.Conv2d(6, 6, 3, groups=6, bias=False)
        self.shared = nn.Conv2d(6, 6, 3, padding=1)
        self.c3 = nn.Conv3d(4, 5, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.w = nn.Parameter(torch.randn(3, 6, 3, 3))
        self.b = nn.Parameter(torch.randn(3))

    def forward(self, a: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = gate(self.path, x)
        y = self.shared(torch.relu(self.shared(self.dw(self.c2(x)))))
        return self.c1(a), F.conv2d(y, self.w, self.b), self.c3(v)


REPORT_INPUTS = ((2, 4, 9), (2, 4, 9, 8), (2, 4, 2, 5, 6))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", [FULL, ConvertConfig(rank=2), grouped(2, rank=2), grouped(2, pointwise=False)])
def test_report_params_and_macs(config: ConvertConfig, path: str) -> None:
    torch.manual_seed(0)
    model = ReportNet(path).eval()
    inputs = [torch.randn(s) for s in REPORT_INPUTS]

    result = convert_model(model, inputs, config)

    report = result.report
    assert report.trace == path
    expected_names = {"c1", "c2", "dw", "shared", "c3"} | (set() if path == "module-walk" else {"w"})
    assert {layer.name for layer in report.layers} == expected_names
    originals = dict(model.named_modules())
    # the depthwise conv is skipped; without pointwise, so are those whose C_out 2 does not divide
    skipped = {True: {"dw"}, False: {"dw", "c3", "w"}}
    if path not in FUNCTIONAL_REWRITTEN:  # found, and kept: fx cannot trace the forward that calls it
        skipped = {pointwise: names | {"w"} for pointwise, names in skipped.items()}
    assert {layer.name for layer in skipped_rows(report)} == skipped[config.pointwise] & expected_names
    for layer in report.layers:
        if layer.name == "w":
            weight, bias = model.w, model.b
        else:
            weight, bias = originals[layer.name].weight, originals[layer.name].bias
        c_out, c_in_per_group, *kernel = weight.shape
        original_params = weight.numel() + (0 if bias is None else bias.numel())
        assert layer.params_before == original_params
        # MACs: C_out * C_in * K * N * H_out * W_out, summed over the call sites
        assert layer.calls == (2 if layer.name == "shared" else 1)
        out_shape = tuple(layer.output_shape)
        assert layer.macs_before == layer.calls * conv_macs(c_out, c_in_per_group, tuple(kernel), out_shape)
        if layer.status == "skipped":
            assert layer.name in skipped[config.pointwise] and layer.reason
            assert (layer.params_after, layer.macs_after) == (layer.params_before, layer.macs_before)
            kept = (
                result.model.get_parameter("w") if layer.name == "w" else result.model.get_submodule(layer.name).weight
            )
            assert kept is not weight and torch.equal(kept, weight)
            continue
        replacement = result.model.get_submodule(layer.name)
        assert layer.params_after == count_params(replacement)
        positions = layer.calls * out_shape[0] * math.prod(out_shape[2:])
        if config.pointwise:
            first, pointwise = list(replacement)
            assert layer.macs_after == positions * (
                first.weight[0].numel() * first.out_channels + pointwise.weight[0].numel() * pointwise.out_channels
            )
        else:
            assert layer.macs_after == positions * replacement.weight[0].numel() * replacement.out_channels
    # totals against the models themselves
    totals = report.totals
    assert totals.params_before == count_params(model)
    assert totals.params_after == count_params(result.model)
    assert totals.converted == len(converted_rows(report)) and totals.skipped == len(skipped_rows(report))
    if path != "module-walk":  # all convs are in the report: the model's MACs are theirs
        assert totals.macs_before == sum(layer.macs_before for layer in report.layers)
        assert totals.macs_after == sum(layer.macs_after for layer in report.layers)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "config", [ConvertConfig(), ConvertConfig(rank=3), grouped(2, rank=1), grouped(2), grouped(2, pointwise=False)]
)
def test_report_weight_error_matches_rebuilt_weight(config: ConvertConfig, path: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = ReportNet(path).eval().to(dtype)
    inputs = [torch.randn(s, dtype=dtype) for s in REPORT_INPUTS]

    result = convert_model(model, inputs, config)

    rows = converted_rows(result.report)
    expected = {"c1", "c2", "shared"} if not config.pointwise else {"c1", "c2", "shared", "c3", "w"}
    assert {layer.name for layer in rows} == expected - ({"w"} if path not in FUNCTIONAL_REWRITTEN else set())
    lossy = 0
    for layer in rows:
        weight = model.w if layer.name == "w" else model.get_submodule(layer.name).weight
        w = weight.detach().double()
        w_hat = dense_weight(result.model.get_submodule(layer.name))
        measured = float((w - w_hat).norm() / w.norm())
        if layer.full_rank is None or layer.rank < layer.full_rank:
            assert measured > 1e-3
            lossy += 1
        tolerance = 1e-12 if dtype == torch.float64 else TOL  # float32 weights: float32 SVD and factors
        assert layer.weight_rel_error == pytest.approx(measured, abs=tolerance)
    assert lossy >= 2


# ---------------------------------------------------------------------------------------------------------------
# What the result keeps, and what convert_model leaves alone.


@pytest.mark.parametrize("path", PATHS)
def test_train_mode_kept_and_original_stats_untouched(path: str) -> None:
    torch.manual_seed(0)
    model = CustomNet(path).train()
    x = torch.randn(4, 3, 8, 8)
    before = snapshot(model)

    result = convert_model(model, x, FULL)

    assert_unchanged(model, before)  # running statistics included
    assert result.model.training
    assert all(m.training for m in result.model.modules())
    # train-mode semantics: batch statistics, and running statistics updated the same way
    original, converted = copy.deepcopy(model), copy.deepcopy(result.model)
    with torch.no_grad():
        assert_outputs_close(converted(x), original(x))
    stats = {n: b for n, b in converted.named_buffers() if "running" in n}
    assert len(stats) == 4
    for name, buffer in stats.items():
        torch.testing.assert_close(buffer, original.get_buffer(name), rtol=TOL, atol=TOL)
    assert not torch.equal(stats["block.bn1.running_mean"], model.block.bn1.running_mean)


@pytest.mark.parametrize("path", PATHS)
def test_mode_switch_after_conversion(path: str) -> None:
    """Converted in train mode, then switched to eval (as before deployment): still the original's function.

    On the export path the aten graph had BatchNorm's train-mode behaviour baked in; the modules whose graph
    depends on the mode are put back as modules, so the switch reaches them.
    """
    torch.manual_seed(0)
    model = CustomNet(path).train()
    x = torch.randn(4, 3, 8, 8)

    result = convert_model(model, x, FULL)

    assert_same_function(result.model.eval(), model.eval(), [x])
    assert not any("keeps its" in note for note in result.report.trace_notes)


class DropNet(nn.Module):
    """Mode-dependent modules of several kinds, one BatchNorm called twice, and a functional conv."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout2d(0.3))
        self.w = nn.Parameter(torch.randn(5, 4, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        x = self.bn(self.conv(x))
        x = self.block(self.drop(self.bn(torch.relu(x))))
        return F.conv2d(x, self.w)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mode_switch_both_ways_dropout_and_shared_batchnorm(path: str, mode: str) -> None:
    """Converted in one mode and switched to the other: the converted model computes what the original does in
    that mode (dropout masks drawn from the same seed), and in train mode updates the same running statistics."""
    torch.manual_seed(0)
    model = DropNet(path).train(mode == "train")
    x = torch.randn(4, 3, 6, 6)

    result = convert_model(model, x, FULL)

    assert result.report.trace == path
    assert_same_function(result.model, model, [x])
    other = mode != "train"
    assert_same_function(result.model.train(other), model.train(other), [x])
    if other:  # train mode: the running statistics move the same way
        converted, original = copy.deepcopy(result.model), copy.deepcopy(model)
        for module in (converted, original):
            torch.manual_seed(1)  # the same dropout masks
            with torch.no_grad():
                module(x)
        for name, buffer in original.named_buffers():
            torch.testing.assert_close(converted.get_buffer(name), buffer, rtol=TOL, atol=TOL)
    if path not in FUNCTIONAL_REWRITTEN:  # rewritten in place: the model's own class and modules
        assert type(result.model) is DropNet and isinstance(result.model.block[0], FactorizedConv)


@pytest.mark.parametrize("path", PATHS)
def test_eval_mode_kept(path: str) -> None:
    torch.manual_seed(0)
    model = CustomNet(path)
    model.train()
    x = torch.randn(2, 3, 8, 8)
    model(x)  # non-trivial running statistics
    model.eval()

    result = convert_model(model, x, FULL)

    assert not result.model.training
    assert not any(m.training for m in result.model.modules())
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_mixed_modes_kept(path: str, mode: str) -> None:
    """Each module keeps its own mode; a replacement takes its conv's (functional convs: the model's)."""
    torch.manual_seed(0)
    model = FuncNet(path).train(mode == "train")
    model.conv.train(mode != "train")  # the module conv in the other mode
    x = torch.randn(2, 4, 8, 7)

    result = convert_model(model, x, FULL)

    modes = {name: m.training for name, m in model.named_modules()}
    for name, module in result.model.named_modules():
        owner = next((p for p in (name, name.rpartition(".")[0]) if p in modes), "")
        assert module.training == modes[owner], name
    assert result.model.training == (mode == "train")
    assert_same_function(result.model, model, [x])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("path", PATHS)
def test_float64_kept_and_exact(path: str, target: str) -> None:
    torch.manual_seed(0)
    model = CustomNet(path).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    config = TARGETS[target] if target == "separable" else grouped(1, rank="full")  # the stem has 3 channels

    result = convert_model(model, x, config)

    assert len(converted_rows(result.report)) == 4
    assert all(p.dtype == torch.float64 for p in result.model.parameters())
    assert all(b.dtype == model.get_buffer(n).dtype for n, b in result.model.named_buffers())
    out = forward(result.model, x)
    assert out.dtype == torch.float64
    assert_outputs_close(out, forward(model, x), tol=TOL64)
    assert result.report.output_rel_error <= TOL64


class TrainNet(nn.Module):
    """Trainable convs with and without bias, a frozen conv, a functional conv on a parameter and on a buffer."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.Conv2d(4, 4, 3, padding=1).requires_grad_(False)
        self.w = nn.Parameter(torch.randn(5, 4, 3, 3) * 0.2)
        self.register_buffer("wb", torch.randn(6, 5, 3, 3) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = gate(self.path, x)
        x = self.frozen(torch.relu(self.bn(self.stem(x))))
        return F.conv2d(F.conv2d(x, self.w, padding=1), self.wb)


@pytest.mark.parametrize("path", PATHS)
def test_converted_model_trains(path: str) -> None:
    """Replacements train where the original weights did (bias or not), and stay frozen where they did not."""
    torch.manual_seed(0)
    model = TrainNet(path).train()
    x = torch.randn(2, 3, 8, 7)
    before = snapshot(model)
    result = convert_model(model, x, ConvertConfig(rank=2))
    converted = result.model
    assert converted.training
    walk = path not in FUNCTIONAL_REWRITTEN  # functional convs stay as they are
    params = dict(converted.named_parameters())
    trainable = {"stem.depthwise.weight", "stem.pointwise.weight", "bn.weight", "bn.bias"}
    trainable |= {"w"} if walk else {"w.depthwise.weight", "w.pointwise.weight"}
    frozen = {"frozen.depthwise.weight", "frozen.pointwise.weight", "frozen.pointwise.bias"}
    frozen |= set() if walk else {"wb.depthwise.weight", "wb.pointwise.weight"}
    assert {n for n, p in params.items() if p.requires_grad} == trainable
    assert {n for n, p in params.items() if not p.requires_grad} == frozen
    start = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD(converted.parameters(), lr=0.1)

    loss = converted(x).square().mean()
    loss.backward()
    optimizer.step()

    for name in trainable:
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
        assert not torch.equal(params[name], start[name]), name
    for name in frozen:
        assert params[name].grad is None and torch.equal(params[name], start[name]), name
    with torch.no_grad():
        assert float(converted(x).square().mean()) != float(loss)
    assert all(p.grad is None for p in model.parameters())
    assert_unchanged(model, before)


@pytest.mark.parametrize("path", PATHS)
def test_save_and_load_round_trip(path: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = FuncNet(path).eval()
    x = torch.randn(2, 4, 8, 7)
    result = convert_model(model, x, FULL)
    file = tmp_path / "model.pt"

    torch.save(result.model, file)
    loaded = torch.load(file, weights_only=False)

    if path in FUNCTIONAL_REWRITTEN:  # the model's forward calls convs as functions: it became a graph module
        assert isinstance(loaded, fx.GraphModule)
    else:
        assert type(loaded) is FuncNet
    assert loaded.training == result.model.training
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in result.model.named_parameters()]
    torch.testing.assert_close(forward(loaded, x), forward(result.model, x), rtol=0, atol=0)
    assert_same_function(loaded, model, [x])
    # state dicts round-trip too
    fresh = torch.load(file, weights_only=False)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(result.model.state_dict())
    torch.testing.assert_close(forward(fresh, x), forward(result.model, x), rtol=0, atol=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", [ConvertConfig(), grouped(2, pointwise=False), grouped(1, rank="full")])
def test_original_not_modified(path: str, config: ConvertConfig) -> None:
    torch.manual_seed(0)
    model = CustomNet(path).train()
    model.block.bn2.eval()  # a mixed-mode model
    model.head.weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    expected = forward(model, x)
    before = snapshot(model)

    result = convert_model(model, x, config)

    assert converted_rows(result.report)
    assert_unchanged(model, before)
    torch.testing.assert_close(forward(model, x), expected, rtol=0, atol=0)
    assert not set(map(id, result.model.parameters())) & set(map(id, model.parameters()))
    assert not set(map(id, result.model.buffers())) & set(map(id, model.buffers()))
