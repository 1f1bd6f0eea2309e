"""The candidate forms of one conv for `--to auto`, and what each would cost: its MACs, its weight error, the error
of the layer's own output and of the model's output with that layer alone in that form."""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from convert.surgery.factorize import full_rank, group_svd, low_rank, truncation_error
from convert.surgery.find import ConvLayer
from convert.surgery.plan import LayerPlan, conv_cost
from convert.surgery.rewrite import build_replacement, plain_conv
from convert.surgery.verify import output_rel_error, run_model
from convert.surgery.whiten import Whitening, whitened_low_rank

__all__ = ["label", "layer_error", "layer_inputs", "macs", "replacement", "run_with", "shortlist"]


def shortlist(layer: ConvLayer, limit: int, svds: dict[int, tuple]) -> list[LayerPlan]:
    """Factorized forms with fewer MACs than the conv that no other form beats on MACs and weight error."""
    spec, weight = layer.spec, layer.weight
    c_in, c_out, k = spec.in_channels, spec.out_channels, math.prod(spec.kernel)
    dense = c_out * c_in * k
    groups = sorted({g for g in _powers_of_two(c_in) if c_in % g == 0} | {c_in})
    options = []  # (macs per position, weight error, plan)
    for g in groups:
        exact = full_rank(c_out, c_in, k, g)
        svds[g] = group_svd(weight, g)
        svals = svds[g][1]
        for r in sorted(set(_powers_of_two(exact)) | {exact}):
            macs = r * c_in * k + g * r * c_out
            if macs < dense:
                options.append((macs, truncation_error(svals, r), LayerPlan(g, r, True, exact)))
    options.sort(key=lambda o: (o[0], o[1]))
    front, best = [], math.inf
    for _, error, plan in options:
        if error < best - 1e-12:
            front.append(plan)
            best = error
    if len(front) > limit:  # evenly spread, always keeping the cheapest and the most accurate
        step = (len(front) - 1) / (limit - 1)
        front = [front[round(i * step)] for i in range(limit)]
    return front


def _powers_of_two(n: int) -> list[int]:
    return [1 << i for i in range(n.bit_length()) if 1 << i <= n]


def replacement(
    layer: ConvLayer, plan: LayerPlan, x: torch.Tensor, svd: tuple, whitening: Whitening | None = None
) -> nn.Module:
    """The module `plan` would put in place of the layer (eval mode, on `x`'s device and dtype): from the weight
    SVD `svd`, or whitened by the layer's inputs (`whitening`, for `plan.groups`) when given."""
    if whitening is None:
        factors = low_rank(layer.weight, plan.groups, plan.rank, svd=svd)
    else:
        factors = whitened_low_rank(layer, plan, whitening)
    return build_replacement(layer.spec, factors, layer.bias, False, False).to(x.device, x.dtype).eval()


def layer_error(layer: ConvLayer, replacement: nn.Module, x: torch.Tensor) -> float:
    """Relative error of the layer's output on its real input `x` when `replacement` takes its place."""
    original = plain_conv(layer.spec, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    with torch.no_grad():
        return output_rel_error(original.to(x.device, x.dtype)(x), replacement(x))


def macs(layer: ConvLayer, plan: LayerPlan | None, x: torch.Tensor) -> int:
    """MACs at the first call site (where `x` is the input)."""
    out_positions = sum(s[0] * math.prod(s[2:]) for s in layer.out_shapes[:1])
    return conv_cost(layer.spec, plan, False, x.shape[0] * math.prod(x.shape[2:]), out_positions)[1]


def label(layer: ConvLayer, plan: LayerPlan | None) -> str:
    if plan is None:
        return "keep"
    if plan.groups == layer.spec.in_channels:
        return f"separable r{plan.rank}"
    return f"grouped g{plan.groups} r{plan.rank}"


def layer_inputs(root: nn.Module, layers: list[ConvLayer], inputs: tuple[torch.Tensor, ...]) -> dict:
    """The input of each layer at its first call on the example input."""
    captured: dict[str, torch.Tensor] = {}
    by_node = {node: layer.name for layer in layers if not layer.module_path for node in layer.nodes}
    handles = []
    for layer in layers:
        if layer.module_path:

            def hook(_module, args, name=layer.name):
                captured.setdefault(name, args[0].detach())

            handles.append(root.get_submodule(layer.module_path).register_forward_pre_hook(hook))
    try:
        if by_node and isinstance(root, fx.GraphModule):

            class Recorder(fx.Interpreter):
                def run_node(self, node):
                    if node in by_node:
                        captured.setdefault(by_node[node], self.env[node.args[0]].detach())
                    return super().run_node(node)

            with torch.no_grad():
                Recorder(root).run(*inputs)
        else:
            run_model(root, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def run_with(root: nn.Module, layer: ConvLayer, replacement: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """The model's output with `replacement` computing the layer (at every call site), nothing else changed."""
    nodes = set(layer.nodes)
    if layer.module_path:
        handle = root.get_submodule(layer.module_path).register_forward_hook(
            lambda _m, args, _out: replacement(args[0])
        )
        try:
            return run_model(root, inputs)
        finally:
            handle.remove()

    class Replaced(fx.Interpreter):
        def run_node(self, node: fx.Node):
            if node in nodes:
                return replacement(self.env[node.args[0]])
            return super().run_node(node)

    with torch.no_grad():
        return Replaced(root).run(*inputs)
