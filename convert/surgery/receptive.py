"""Receptive field of every node of a traced graph, in input positions per spatial dimension.

The classic recurrence (Araujo et al., "Computing Receptive Fields of Convolutional Neural Networks",
Distill 2019): a window op with kernel k, stride s and dilation d maps (rf, jump) to
(rf + (k-1)*d*jump, jump*s). Other ops take the largest field among their inputs; an op whose output is
1 in every spatial dimension while its input was not (global pooling) sees the whole input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from convert.surgery.ops import CONV_FUNCTIONS, POOL_MODULES, ConvModule, conv_call_args, per_dim

__all__ = ["Field", "receptive_fields"]

Field = tuple[tuple[int, ...], tuple[int, ...]]  # (receptive field, jump) per spatial dimension

_aten = torch.ops.aten
# pooling calls: (index of kernel_size, of stride, of dilation or None) in their positional arguments
_POOL_FUNCTIONS: dict[Any, tuple[int, int, int | None]] = {
    **{f: (1, 2, 4) for f in (F.max_pool1d, F.max_pool2d, F.max_pool3d)},
    **{f: (1, 2, None) for f in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)},
    **{
        op: (1, 2, 4)
        for op in (
            _aten.max_pool1d.default,
            _aten.max_pool2d.default,
            _aten.max_pool3d.default,
            _aten.max_pool2d_with_indices.default,
            _aten.max_pool3d_with_indices.default,
        )
    },
    **{op: (1, 2, None) for op in (_aten.avg_pool1d.default, _aten.avg_pool2d.default, _aten.avg_pool3d.default)},
}


def receptive_fields(gm: fx.GraphModule) -> dict[fx.Node, tuple[int, ...]]:
    """The receptive field of each node with spatial dimensions, from the shapes stored on the nodes.

    Needs shapes in `node.meta` ("tensor_meta" from ShapeProp, or "val" from torch.export).
    """
    fields: dict[fx.Node, Field] = {}
    image: tuple[int, ...] | None = None
    for node in gm.graph.nodes:
        shape = _spatial(node)
        if shape is None:
            continue
        if node.op == "placeholder":
            image = image or shape
            fields[node] = ((1,) * len(shape), (1,) * len(shape))
            continue
        inputs = [fields[n] for n in node.all_input_nodes if n in fields and len(fields[n][0]) == len(shape)]
        if not inputs:
            continue
        window = _window(gm, node, len(shape))
        if window is not None:
            (rf, jump), (kernel, stride, dilation) = inputs[0], window
            fields[node] = (
                tuple(r + (k - 1) * d * j for r, k, d, j in zip(rf, kernel, dilation, jump, strict=True)),
                tuple(j * s for j, s in zip(jump, stride, strict=True)),
            )
            continue
        rf = tuple(max(f[0][i] for f in inputs) for i in range(len(shape)))
        jump = tuple(max(f[1][i] for f in inputs) for i in range(len(shape)))
        inputs_spatial = [_spatial(n) for n in node.all_input_nodes]
        if image and all(d == 1 for d in shape) and any(s and math.prod(s) > 1 for s in inputs_spatial):
            rf = tuple(max(r, i) for r, i in zip(rf, image, strict=True))  # global pooling sees everything
        fields[node] = (rf, jump)
    return {node: rf for node, (rf, _) in fields.items()}


def _window(gm: fx.GraphModule, node: fx.Node, dims: int) -> tuple[Sequence[int], ...] | None:
    """(kernel, stride, dilation) of a conv or pooling node, else None."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, ConvModule) and not module.transposed:
            return module.kernel_size, module.stride, module.dilation
        if isinstance(module, POOL_MODULES):
            dilation = getattr(module, "dilation", 1)
            return (
                per_dim(module.kernel_size, dims),
                per_dim(module.stride or module.kernel_size, dims),
                per_dim(dilation, dims),
            )
        return None
    if node.op != "call_function":
        return None
    if node.target in CONV_FUNCTIONS:
        args = conv_call_args(node)
        weight = _spatial(args["weight"], keep_all=True)
        if weight is None:
            return None
        return weight[2:], per_dim(args["stride"], dims), per_dim(args["dilation"], dims)
    if node.target in _POOL_FUNCTIONS:
        k_at, s_at, d_at = _POOL_FUNCTIONS[node.target]
        args = list(node.args) + [None] * 6
        kernel = per_dim(node.kwargs.get("kernel_size", args[k_at]), dims)
        stride = node.kwargs.get("stride", args[s_at]) or kernel
        dilation = (node.kwargs.get("dilation", args[d_at]) if d_at is not None else None) or 1
        return kernel, per_dim(stride, dims), per_dim(dilation, dims)
    return None


def _spatial(node: Any, keep_all: bool = False) -> tuple[int, ...] | None:
    """Spatial sizes (dims after batch and channels) of a node's tensor; all dims with `keep_all`."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta", node.meta.get("val"))
    shape = getattr(meta, "shape", None)
    if shape is None:
        return None
    if keep_all:
        return tuple(int(d) for d in shape)
    return tuple(int(d) for d in shape[2:]) if len(shape) >= 3 else None
