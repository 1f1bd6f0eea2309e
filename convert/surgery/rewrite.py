"""Graph surgery: put the factorized convs in place of the originals, once per conv, at every call site.

Conv modules are swapped in the module tree (so every `call_module` site, and every plain Python call in
the module-walk path, uses the one replacement). Functional calls (`F.conv2d`, `aten.conv2d`) become
`call_module` nodes of a new submodule registered where the weight's owner was, when nothing else lives
there.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import fx, nn

from convert.surgery.factorize import Factors, transposed_layout
from convert.surgery.find import ConvLayer, ConvSpec

__all__ = ["apply", "build_replacement", "plain_conv", "set_submodule"]

_CONV_CLASSES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED_CLASSES: dict[int, type[nn.Module]] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def build_replacement(
    spec: ConvSpec, factors: Factors, bias: torch.Tensor | None, training: bool, weight_requires_grad: bool
) -> nn.Module:
    """The module computing the factorized conv: `first` alone, or Sequential(depthwise|grouped, pointwise).

    The first conv keeps the kernel, stride, padding, dilation and padding_mode (a transposed conv: a
    transposed first conv, with its output_padding too); the 1x1 conv keeps the original's groups; the bias
    goes on the last conv. Dtype and device follow the original weight; requires_grad follows the original
    weight (for the weights made from it) and bias.
    """
    conv = _CONV_CLASSES[spec.dim]
    weight = factors.first  # (G*r, C_in/G, *k)
    groups = spec.in_channels // weight.shape[1]
    options = dict(device=weight.device, dtype=weight.dtype)
    bias_first = bias is not None and factors.pointwise is None
    if spec.transposed:
        weight = transposed_layout(weight, groups)  # (C_in, r, *k)
        first_class, channels = _TRANSPOSED_CLASSES[spec.dim], weight.shape[1] * groups
        extra = {"output_padding": spec.output_padding}  # ConvTranspose has no padding mode but zeros
    else:
        first_class, channels, extra = conv, weight.shape[0], {"padding_mode": spec.padding_mode}
    first = first_class(
        spec.in_channels,
        channels,
        spec.kernel,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=groups,
        bias=bias_first,
        **extra,
        **options,
    )
    layers = [("depthwise" if groups == spec.in_channels else "grouped", first)]
    if factors.pointwise is not None:
        pointwise = conv(first.out_channels, spec.out_channels, 1, groups=spec.groups, bias=bias is not None, **options)
        layers.append(("pointwise", pointwise))
    with torch.no_grad():
        first.weight.copy_(weight)
        if factors.pointwise is not None:
            layers[-1][1].weight.copy_(factors.pointwise)
        if bias is not None:
            layers[-1][1].bias.copy_(bias)
    module = first if len(layers) == 1 else nn.Sequential(OrderedDict(layers))
    for param in module.parameters():
        param.requires_grad_(weight_requires_grad)
    if bias is not None:
        layers[-1][1].bias.requires_grad_(bias.requires_grad)
    return module.train(training)


def plain_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A standard conv module computing `spec` with `weight` and `bias` (copied): a functional call as a module."""
    conv = _CONV_CLASSES[spec.dim](
        spec.in_channels,
        spec.out_channels,
        spec.kernel,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=spec.groups,
        bias=bias is not None,
        padding_mode=spec.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def apply(root: nn.Module, layer: ConvLayer, replacement: nn.Module) -> str:
    """Put `replacement` in place of `layer` in `root` (the traced module, or a copy of it); returns the
    replacement's module path."""
    if layer.module_path is not None:
        set_submodule(root, layer.module_path, replacement)
        return layer.module_path
    assert isinstance(root, fx.GraphModule), "functional convs are only found in graphs"
    return _replace_calls(root, layer, replacement)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """`root.a.b.c = module` for path "a.b.c" (indexes of Sequential/ModuleList included)."""
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent), leaf, module)


def _replace_calls(gm: fx.GraphModule, layer: ConvLayer, replacement: nn.Module) -> str:
    graph = gm.graph
    by_name = {node.name: node for node in graph.nodes}  # `gm` may be a copy of the graph the layer was found in
    calls = [by_name[node.name] for node in layer.nodes]
    sites = set(calls)
    # weight and bias reads that only these calls use: they go, and so may the module that held them
    attrs = {arg for node in sites for arg in node.all_input_nodes if arg.op == "get_attr" and set(arg.users) <= sites}
    others = {n.target for n in graph.nodes if n.op == "get_attr" and n not in attrs}
    for target in {attr.target for attr in attrs} - others:
        _delete_attr(gm, target)
    path = _free_path(gm, layer.name)
    if "." in path:
        set_submodule(gm, path, replacement)
    else:
        gm.add_submodule(path, replacement)
    for node in calls:
        with graph.inserting_before(node):
            call = graph.call_module(path, (node.args[0] if node.args else node.kwargs["input"],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    for attr in attrs:
        graph.erase_node(attr)
    graph.lint()
    gm.recompile()
    return path


def _delete_attr(gm: fx.GraphModule, path: str) -> None:
    """Remove a parameter or buffer no longer read, and the module that held it if it is now empty."""
    owner_path, _, leaf = path.rpartition(".")
    owner = gm.get_submodule(owner_path)
    delattr(owner, leaf)
    empty = not any(True for _ in owner.children()) and not any(True for _ in owner.named_parameters(recurse=False))
    if owner_path and empty and not any(True for _ in owner.named_buffers(recurse=False)):
        parent, _, name = owner_path.rpartition(".")
        delattr(gm.get_submodule(parent), name)


def _free_path(gm: fx.GraphModule, wanted: str) -> str:
    """`wanted` if no module or attribute lives there, else `wanted` with a numbered suffix."""
    base = wanted if _parent_exists(gm, wanted) else wanted.replace(".", "_")
    candidate, index = base, 1
    while _occupied(gm, candidate):
        index += 1
        candidate = f"{base}_{index}"
    return candidate


def _parent_exists(gm: fx.GraphModule, path: str) -> bool:
    parent = path.rpartition(".")[0]
    try:
        gm.get_submodule(parent)
    except AttributeError:
        return False
    return True


def _occupied(gm: fx.GraphModule, path: str) -> bool:
    parent, _, leaf = path.rpartition(".")
    return hasattr(gm.get_submodule(parent), leaf)
