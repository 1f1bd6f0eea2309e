"""Find the convolutions in a traced model, and say for each one that cannot be converted why not.

A candidate is nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d (a module whose forward is the stock one), or a
functional `F.conv*d` / `F.conv_transpose*d` / `aten.conv*d` call whose weight is a parameter or buffer of the
model, that is not depthwise already. Whether grouped and transposed ones are converted is the plan's choice.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx, nn

from convert.surgery.ops import CONV_FUNCTIONS, TRANSPOSED_FUNCTIONS, ConvModule, conv_call_args, is_conv_call, per_dim
from convert.surgery.receptive import receptive_fields
from convert.surgery.trace import CallShapes, Traced

__all__ = ["ConvLayer", "ConvSpec", "find_convs", "function_layer", "INPUT_SIDE_CONVS", "module_layer"]

_MODULE_TYPES: dict[type[nn.Module], int] = {
    nn.Conv1d: 1,
    nn.Conv2d: 2,
    nn.Conv3d: 3,
    nn.ConvTranspose1d: 1,
    nn.ConvTranspose2d: 2,
    nn.ConvTranspose3d: 3,
}
# Conv subclasses whose forward only prepares the input before the stock conv on their own weight (padding computed
# at run time): converted, the first conv of the replacement being of the same class, which prepares it the same
# way. Keyed by module.qualname; every other subclass that overrides forward is left, with the reason.
INPUT_SIDE_CONVS: dict[str, str] = {
    "timm.layers.conv2d_same.Conv2dSame": "pads its input to TensorFlow's 'same' at run time",
}
# Convolutions found but never converted, each with the reason given in the report.
_UNSUPPORTED_FUNCTIONS: dict[Any, str] = {
    torch.ops.aten.convolution.default: "generic aten.convolution call: not converted",
}


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """Hyper-parameters of a convolution, enough to build its replacement."""

    dim: int  # 1, 2 or 3 spatial dimensions
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str  # per-dimension ints, or "same" / "valid"
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str  # zeros | reflect | replicate | circular
    transposed: bool = False  # ConvTranspose: weight (C_in, C_out/groups, *k)
    output_padding: tuple[int, ...] = ()  # transposed only: extra size added to one side of the output
    # A key of INPUT_SIDE_CONVS when the conv is such a subclass (its replacement's first conv is one too); else ""
    conv_class: str = ""


@dataclasses.dataclass
class ConvLayer:
    """One convolution of the model: a module (maybe called at several sites) or a functional call."""

    name: str  # module path, or the weight's path without ".weight" for functional calls
    op: str  # "Conv2d", "F.conv2d", "aten.conv2d", ...
    spec: ConvSpec | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    module_path: str | None = None  # path of the conv module to swap; None for functional calls
    weight_path: str | None = None  # functional calls only: the path of the weight they read
    # functional calls only: the module whose forward makes them ("" the model), the smallest one to rewrite
    owner: str = ""
    nodes: list[fx.Node] = dataclasses.field(default_factory=list)  # functional call sites (analysis graph)
    out_shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # one per call site
    in_shapes: list[tuple[int, ...]] = dataclasses.field(default_factory=list)  # one per call site
    unsupported: str | None = None  # why no planner may convert it (set by `find` only); None: a candidate
    receptive_field: tuple[int, ...] | None = None  # in input positions, at the output; None without a graph


def find_convs(traced: Traced) -> list[ConvLayer]:
    """Every convolution the example input reaches, in graph order (the module walk: in module order).

    Conv modules inside modules that the graph calls as a whole (`traced.leaves`, or the whole model on the
    module walk) are found by walking those modules, with their call shapes from `traced.calls`.
    """
    if traced.strategy == "module-walk":
        return _find_in_modules(traced.model, [""], traced.calls)
    model = None if traced.model is traced.module else traced.model  # None: the graph is the model (a .pt2)
    layers = _find_in_graph(traced.module, model)
    return layers + _find_in_modules(traced.model, traced.leaves, traced.calls)


def _find_in_modules(root: nn.Module, owners: list[str], calls: dict[str, list[CallShapes]]) -> list[ConvLayer]:
    layers = []
    for owner in owners:
        for name, module in root.get_submodule(owner).named_modules(prefix=owner):
            if not isinstance(module, ConvModule):
                continue
            layer = module_layer(name, module)
            layer.in_shapes = [shapes[0] for shapes in calls.get(name, [])]
            layer.out_shapes = [shapes[1] for shapes in calls.get(name, [])]
            if not layer.out_shapes and layer.unsupported is None:
                layer.unsupported = "not called on the example input"
            layers.append(layer)
    return layers


def _find_in_graph(gm: fx.GraphModule, model: nn.Module | None) -> list[ConvLayer]:
    """The convs of a graph of `model` (None: the graph is the model itself). A functional call that a conv
    module makes in its own forward (torch.export records every conv so; fx does for subclasses it traces into) is
    that module's call. Code that reads a conv module's weight elsewhere reads its replacement's (FactorizedConv
    gives the dense weight it computes)."""
    by_key: dict[Any, ConvLayer] = {}
    fields = receptive_fields(gm)
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ConvModule):
            key: Any = node.target
            if key not in by_key:
                by_key[key] = module_layer(node.target, gm.get_submodule(node.target))
            if len(node.args) + len(node.kwargs) > 1:
                by_key[key].unsupported = "called with an output_size: its replacement takes the input only"
        elif node.op == "call_function" and is_conv_call(node):
            owner = _caller(node, model)
            if model is not None and isinstance(model.get_submodule(owner), ConvModule):
                key = owner
                if key not in by_key:
                    by_key[key] = module_layer(owner, model.get_submodule(owner))
            else:
                key, layer = function_layer(gm, node)
                layer.owner = _enclosing(owner, layer.weight_path or "")
                if key not in by_key:
                    by_key[key] = layer
                by_key[key].nodes.append(node)
        elif node.op == "call_function" and node.target in _UNSUPPORTED_FUNCTIONS:
            key = node.name
            by_key[key] = ConvLayer(
                name=node.name, op=_op_name(node.target), unsupported=_UNSUPPORTED_FUNCTIONS[node.target]
            )
        else:
            continue
        by_key[key].out_shapes.append(_shape(node))
        by_key[key].in_shapes.append(_shape(node.args[0] if node.args else node.kwargs.get("input")))
        if node in fields:  # the widest over call sites
            known = by_key[key].receptive_field or fields[node]
            by_key[key].receptive_field = tuple(map(max, known, fields[node]))
    return list(by_key.values())


def _caller(node: fx.Node, model: nn.Module | None) -> str:
    """The path of the innermost module of `model` whose forward made this call ("" the model itself)."""
    path = _innermost(node)
    if model is None or not path:
        return ""
    try:
        model.get_submodule(path)
    except AttributeError:  # a path torch.export spells otherwise: the model's own forward is the safe owner
        return ""
    return path


def _enclosing(owner: str, weight_path: str) -> str:
    """`owner`, or its nearest ancestor that holds the weight (a module's forward may read a parent's weight)."""
    while owner and not weight_path.startswith(f"{owner}."):
        owner = owner.rpartition(".")[0]
    return owner


def _innermost(node: fx.Node) -> str:
    """The module path a node of a graph belongs to, from the stack fx and torch.export record ("" none)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def module_layer(name: str, module: ConvModule) -> ConvLayer:
    layer = ConvLayer(name=name, op=type(module).__name__, module_path=name, weight=module.weight, bias=module.bias)
    base = next((t for t in _MODULE_TYPES if isinstance(module, t)), None)
    if base is None:
        layer.unsupported = f"{type(module).__name__} is not a standard Conv1d/2d/3d or ConvTranspose1d/2d/3d"
        return layer
    qualname = f"{type(module).__module__}.{type(module).__qualname__}"
    own_forward = type(module).forward is not base.forward or getattr(
        type(module), "_conv_forward", None
    ) is not getattr(base, "_conv_forward", None)
    if own_forward and qualname not in INPUT_SIDE_CONVS:
        layer.unsupported = f"{type(module).__name__} computes its own forward (e.g. weight standardization)"
    layer.spec = ConvSpec(
        dim=_MODULE_TYPES[base],
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=module.groups,
        padding_mode=module.padding_mode,
        transposed=module.transposed,
        output_padding=tuple(module.output_padding) if module.transposed else (),
        conv_class=qualname if own_forward and qualname in INPUT_SIDE_CONVS else "",
    )
    layer.unsupported = layer.unsupported or _depthwise_reason(layer.spec)
    return layer


def function_layer(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, ConvLayer]:
    transposed = node.target in TRANSPOSED_FUNCTIONS
    dim, op = (TRANSPOSED_FUNCTIONS if transposed else CONV_FUNCTIONS)[node.target]
    args = conv_call_args(node)
    weight_node, bias_node = args["weight"], args["bias"]
    if not _is_attr(weight_node) or not (bias_node is None or _is_attr(bias_node)):
        what = "weight" if not _is_attr(weight_node) else "bias"
        return node.name, ConvLayer(name=node.name, op=op, unsupported=f"its {what} is computed at run time")
    weight = _attr(gm, weight_node.target)
    bias = None if bias_node is None else _attr(gm, bias_node.target)
    padding, groups = args["padding"], args["groups"]
    channels = (
        (weight.shape[0], weight.shape[1] * groups) if transposed else (weight.shape[1] * groups, weight.shape[0])
    )
    spec = ConvSpec(
        dim=dim,
        in_channels=channels[0],
        out_channels=channels[1],
        kernel=tuple(weight.shape[2:]),
        stride=per_dim(args["stride"], dim),
        padding=padding if isinstance(padding, str) else per_dim(padding, dim),
        dilation=per_dim(args["dilation"], dim),
        groups=groups,
        padding_mode="zeros",  # a padding_mode other than zeros shows as a separate pad op before the call
        transposed=transposed,
        output_padding=per_dim(args["output_padding"], dim) if transposed else (),
    )
    weight_path = weight_node.target
    name = weight_path.removesuffix(".weight") if weight_path.endswith(".weight") else weight_path
    key = (weight_path, getattr(bias_node, "target", None), spec)
    layer = ConvLayer(name=name, op=op, spec=spec, weight=weight, bias=bias, unsupported=_depthwise_reason(spec))
    layer.weight_path = weight_path
    return key, layer


def _depthwise_reason(spec: ConvSpec) -> str | None:
    if spec.groups > 1 and spec.groups == spec.in_channels:
        return "already depthwise"
    return None


def _is_attr(value: Any) -> bool:
    return isinstance(value, fx.Node) and value.op == "get_attr"


def _attr(gm: fx.GraphModule, path: str) -> torch.Tensor:
    owner, _, leaf = path.rpartition(".")
    return getattr(gm.get_submodule(owner), leaf)


def _shape(node: Any) -> tuple[int, ...]:
    if not isinstance(node, fx.Node):
        return ()
    meta = node.meta.get("tensor_meta", node.meta.get("val"))  # tensor_meta: ShapeProp's, on the inputs given
    return tuple(int(d) for d in meta.shape) if meta is not None else ()


def _op_name(target: Any) -> str:
    return getattr(target, "__name__", str(target)).removesuffix(".default")
