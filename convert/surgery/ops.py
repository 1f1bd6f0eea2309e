"""The convolution ops that models and graphs hold (modules, functional calls), shared by `find` (what to convert),
`receptive` and `trace`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "is_conv_call",
    "conv_call_args",
    "CONV_FUNCTIONS",
    "ConvModule",
    "per_dim",
    "POOL_MODULES",
    "TRANSPOSED_FUNCTIONS",
]

_aten = torch.ops.aten

# The bases of every conv and pooling module (subclasses included): torch has no public names for them.
ConvModule = nn.modules.conv._ConvNd  # noqa: SLF001
POOL_MODULES = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)  # noqa: SLF001

# call target -> (spatial dimensions, name in the report); `F.conv*d` in fx graphs, `aten.conv*d` in export's
CONV_FUNCTIONS: dict[Any, tuple[int, str]] = {
    **{getattr(F, f"conv{d}d"): (d, f"F.conv{d}d") for d in (1, 2, 3)},
    **{getattr(_aten, f"conv{d}d").default: (d, f"aten.conv{d}d") for d in (1, 2, 3)},
    **{getattr(_aten, f"conv{d}d").padding: (d, f"aten.conv{d}d") for d in (1, 2, 3)},  # padding="same"/"valid"
}
# the same for transposed convs, whose weight is (C_in, C_out/groups, *k)
TRANSPOSED_FUNCTIONS: dict[Any, tuple[int, str]] = {
    **{getattr(F, f"conv_transpose{d}d"): (d, f"F.conv_transpose{d}d") for d in (1, 2, 3)},
    _aten.conv_transpose1d.default: (1, "aten.conv_transpose1d"),
    _aten.conv_transpose2d.input: (2, "aten.conv_transpose2d"),
    _aten.conv_transpose3d.input: (3, "aten.conv_transpose3d"),
}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_TRANSPOSED_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1}


def is_conv_call(node: fx.Node) -> bool:
    """A functional call of a conv or transposed conv (fx's `F.conv2d`, export's `aten.conv2d`, ...)."""
    return node.target in CONV_FUNCTIONS or node.target in TRANSPOSED_FUNCTIONS


def conv_call_args(node: fx.Node) -> dict[str, Any]:
    """The arguments of a call in CONV_FUNCTIONS or TRANSPOSED_FUNCTIONS by name, defaults filled in (positional
    or keyword alike)."""
    names = _TRANSPOSED_ARGS if node.target in TRANSPOSED_FUNCTIONS else _CONV_ARGS
    return dict(_CONV_DEFAULTS) | dict(zip(names, node.args, strict=False)) | dict(node.kwargs)


def per_dim(value: Any, dims: int) -> tuple[int, ...]:
    """3 -> (3, 3) for dims=2; (2, 1) stays (2, 1)."""
    values = tuple(value) if isinstance(value, list | tuple) else (value,)
    return values * dims if len(values) == 1 else values
