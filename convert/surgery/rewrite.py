"""Put the factorized convs in place of the originals, in the user's own module tree, once per conv.

Conv modules are swapped at their parent's attribute (every attribute holding a shared conv), so the model keeps
its class, its Python and its hooks. Functional calls (`F.conv2d` on a module's own weight) need a graph: the
smallest module whose forward makes them becomes an fx graph module, each call a `call_module` of its replacement.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import fx, nn

from convert.surgery.factorize import Factors, transposed_layout
from convert.surgery.find import ConvLayer, ConvSpec, function_layer
from convert.surgery.modules import FactorizedConv
from convert.surgery.ops import conv_call_args, is_conv_call
from convert.surgery.trace import LeafTracer

__all__ = [
    "build_replacement",
    "copy_hooks",
    "plain_conv",
    "rewrite_calls",
    "set_factors",
    "set_submodule",
    "swap_module",
]

_CONV_CLASSES: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED_CLASSES: dict[int, type[nn.Module]] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def build_replacement(
    spec: ConvSpec, factors: Factors, bias: torch.Tensor | None, training: bool, weight_requires_grad: bool
) -> nn.Module:
    """The module computing the factorized conv: a `FactorizedConv` (depthwise|grouped, then pointwise), or the
    plain grouped conv alone (no pointwise factor).

    The first conv keeps the kernel, stride, padding, dilation and padding_mode (a transposed conv: a
    transposed first conv, with its output_padding too), and the original's class when that class prepares its
    input (`find.INPUT_SIDE_CONVS`); the 1x1 conv keeps the original's groups; the bias goes on the last conv.
    Dtype and device follow the original weight; requires_grad follows the original weight (for the weights
    made from it) and bias.
    """
    weight = factors.first  # (G*r, C_in/G, *k)
    groups = spec.in_channels // weight.shape[1]
    options = dict(device=weight.device, dtype=weight.dtype)
    channels = weight.shape[0]  # of the first conv's output (a transposed one's too: G groups of r)
    first = _conv(spec, channels, groups, bias is not None and factors.pointwise is None, **options)
    module = first
    if factors.pointwise is not None:
        last = _CONV_CLASSES[spec.dim](
            channels, spec.out_channels, 1, groups=spec.groups, bias=bias is not None, **options
        )
        module = FactorizedConv(first, last, spec)
    set_factors(module, spec, factors, bias)
    for param in module.parameters():
        param.requires_grad_(weight_requires_grad)
    if bias is not None:
        _last(module).bias.requires_grad_(bias.requires_grad)
    return module.train(training)


def set_factors(module: nn.Module, spec: ConvSpec, factors: Factors, bias: torch.Tensor | None) -> None:
    """Copy `factors` (and `bias`, onto the last conv) into a module `build_replacement` made for their shapes;
    requires_grad is kept."""
    first = module[0] if isinstance(module, FactorizedConv) else module
    weight = factors.first
    if spec.transposed:
        weight = transposed_layout(weight, spec.in_channels // weight.shape[1])  # (C_in, r, *k)
    with torch.no_grad():
        first.weight.copy_(weight)
        if factors.pointwise is not None:
            module[1].weight.copy_(factors.pointwise)
        if bias is not None:
            _last(module).bias.copy_(bias)


def _last(module: nn.Module) -> nn.Module:
    return module[1] if isinstance(module, FactorizedConv) else module


def plain_conv(spec: ConvSpec, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A conv module computing `spec` with `weight` and `bias` (copied): e.g. a functional call as a module."""
    conv = _conv(spec, spec.out_channels, spec.groups, bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _conv(spec: ConvSpec, out_channels: int, groups: int, bias: bool, **options: object) -> nn.Module:
    """A conv of `spec`'s class, kernel, stride, padding and dilation with these channels and groups."""
    if spec.conv_class:  # an input-side subclass: its constructor is nn.Conv*d's, without padding_mode
        module_name, _, name = spec.conv_class.rpartition(".")
        conv_class, extra = getattr(importlib.import_module(module_name), name), {}
    elif spec.transposed:
        conv_class, extra = _TRANSPOSED_CLASSES[spec.dim], {"output_padding": spec.output_padding}
    else:
        conv_class, extra = _CONV_CLASSES[spec.dim], {"padding_mode": spec.padding_mode}
    return conv_class(
        spec.in_channels,
        out_channels,
        spec.kernel,
        stride=spec.stride,
        padding=spec.padding,
        dilation=spec.dilation,
        groups=groups,
        bias=bias,
        **extra,
        **options,
    )


def swap_module(root: nn.Module, path: str, replacement: nn.Module) -> list[str]:
    """Put `replacement` in place of the module at `path`, at every attribute of `root` that holds that module (a
    conv shared by several parents is replaced once, everywhere). Returns the paths."""
    original = root.get_submodule(path)
    paths = [name for name, module in root.named_modules(remove_duplicate=False) if module is original]
    for alias in paths:
        set_submodule(root, alias, replacement)
    return paths


def rewrite_calls(
    root: nn.Module, owner: str, calls: Sequence[tuple[ConvLayer, nn.Module]]
) -> tuple[nn.Module, dict[str, str]]:
    """Functional convs (`F.conv2d` on a module's own weight): the module `owner` of `root`, whose forward makes the
    calls, becomes an fx graph module in which each call is a call of its replacement. Only that module changes
    (its Python is fixed as traced); `root` keeps everything else.

    Returns:
        The root (`root` itself, or the graph module when `owner` is "" and `root` is no graph already), and per
        layer name the path of its replacement.

    Raises:
        RuntimeError: when fx cannot trace `owner`, or a call of a layer is not in its graph.
    """
    module = root.get_submodule(owner)
    if isinstance(module, fx.GraphModule):
        gm = module  # a .pt2's graph, or a module rewritten before: rewrite its graph
    else:
        gm = fx.GraphModule(module, _Tracer().trace(module), type(module).__name__)
        modes = {name: m.training for name, m in module.named_modules()}
        for name, m in gm.named_modules():  # the graph module and the holders fx makes along paths start in train
            m.training = modes.get(name, module.training)
    prefix = f"{owner}." if owner else ""
    paths = {}
    for layer, replacement in calls:
        sites = [node for node in gm.graph.nodes if _calls_weight(gm, node, layer, prefix)]
        if not sites:
            raise RuntimeError(f"the calls of {layer.name} are not in the graph of {owner or 'the model'}")
        name = layer.name.removeprefix(prefix) if layer.name != owner else "conv"
        paths[layer.name] = prefix + _replace_calls(gm, sites, name, replacement)
    if gm is module:
        return root, paths
    if not owner:
        return gm, paths
    set_submodule(root, owner, gm)
    return root, paths


class _Tracer(LeafTracer):
    """fx's tracer that calls whole the submodules fx cannot trace, and the replacements already in place (they stay
    FactorizedConv)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, FactorizedConv) or super().is_leaf_module(m, module_qualified_name)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    """`root.a.b.c = module` for path "a.b.c" (indexes of Sequential/ModuleList included)."""
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent), leaf, module)


def _calls_weight(gm: fx.GraphModule, node: fx.Node, layer: ConvLayer, prefix: str) -> bool:
    """Whether `node` is a conv call of `layer`'s weight with its hyper-parameters."""
    if node.op != "call_function" or not is_conv_call(node):
        return False
    weight = conv_call_args(node)["weight"]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr") or prefix + weight.target != layer.weight_path:
        return False
    return function_layer(gm, node)[1].spec == layer.spec


def copy_hooks(source: nn.Module, target: nn.Module) -> None:
    """Register `source`'s forward hooks and pre-hooks on `target`, which takes the same input and gives the same
    output (torch lists a module's hooks only in private dicts; weight-norm style hooks, which recompute `weight`,
    are left: their weight is what was factorized)."""
    for key, hook in source._forward_pre_hooks.items():  # noqa: SLF001
        if not _recomputes_weight(hook):
            target.register_forward_pre_hook(hook, with_kwargs=key in source._forward_pre_hooks_with_kwargs)  # noqa: SLF001
    for key, hook in source._forward_hooks.items():  # noqa: SLF001
        target.register_forward_hook(
            hook,
            with_kwargs=key in source._forward_hooks_with_kwargs,  # noqa: SLF001
            always_call=key in source._forward_hooks_always_called,  # noqa: SLF001
        )


def _recomputes_weight(hook: object) -> bool:
    return type(hook).__name__ in ("WeightNorm", "SpectralNorm")


def _replace_calls(gm: fx.GraphModule, calls: list[fx.Node], name: str, replacement: nn.Module) -> str:
    """Replace the conv calls `calls` of `gm` by calls of `replacement`, registered at a free path near `name`."""
    graph = gm.graph
    sites = set(calls)
    # weight and bias reads that only these calls use: they go, and so may the module that held them
    attrs = {arg for node in sites for arg in node.all_input_nodes if arg.op == "get_attr" and set(arg.users) <= sites}
    others = {n.target for n in graph.nodes if n.op == "get_attr" and n not in attrs}
    for target in {attr.target for attr in attrs} - others:
        _delete_attr(gm, target)
    path = _free_path(gm, name)
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
