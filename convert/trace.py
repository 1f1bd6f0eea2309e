"""Get a graph of the model: torch.fx.symbolic_trace, else torch.export, else a walk over its modules.

fx keeps module names (convs stay `call_module` nodes) but cannot follow shape-dependent control flow;
torch.export can, and gives an aten-level graph; value-dependent control flow defeats both, and then the
conv modules are swapped in place, with forward hooks recording which ones run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from convert.errors import one_line
from convert.verify import output_rel_error, run_model

logger = logging.getLogger(__name__)

TracePath = Literal["fx", "export", "module-walk"]
TRACE_MATCH_RTOL = 1e-4  # a traced graph must reproduce the model's output this closely to be used
_CONV_TYPES = (nn.modules.conv._ConvNd,)


@dataclasses.dataclass
class Traced:
    """The model in the form the later stages rewrite."""

    path: TracePath
    module: nn.Module  # fx.GraphModule for "fx" and "export"; the model itself for "module-walk"
    notes: list[str]  # why earlier paths were not taken
    # module-walk only: conv module name -> output shape of each call on the example input
    calls: dict[str, list[tuple[int, ...]]] = dataclasses.field(default_factory=dict)


def trace(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    reference: Any,
    exported: torch.export.ExportedProgram | None = None,
) -> Traced:
    """Trace `model` (which the caller owns and may be changed) by the first path that works.

    Args:
        model: the module to trace; later stages rewrite what this returns, so pass a copy.
        inputs: example inputs, positional.
        reference: the model's output on `inputs` (from `run_model`); a graph must reproduce it.
        exported: an ExportedProgram the model came from (a .pt2 file): its graph is used directly.
    """
    notes: list[str] = []
    if exported is None:
        try:
            return Traced("fx", _fx_graph(model, inputs, reference), notes)
        except Exception as e:  # noqa: BLE001 - any failure means "try the next path"
            notes.append(f"fx: {one_line(e)}")
            logger.info("fx.symbolic_trace failed (%s); trying torch.export", notes[-1])
        try:
            exported = torch.export.export(model, tuple(inputs))
        except Exception as e:  # noqa: BLE001
            notes.append(f"export: {one_line(e)}")
            logger.info("torch.export failed (%s); swapping modules in place", notes[-1])
            notes.append("module-walk: functional conv calls (F.conv2d) are not visible without a graph")
            return Traced("module-walk", model, notes, _record_conv_calls(model, inputs))
        if any(m.training for m in model.modules()):
            notes.append(
                "export: the graph keeps the train-mode behaviour it was traced in (e.g. BatchNorm batch "
                "statistics) even after .eval(): convert the model in the mode it will run in"
            )
        return Traced("export", _copy_modes(plain_graph_module(exported), model), notes)
    gm = plain_graph_module(exported)
    _propagate_shapes(gm, inputs)  # a .pt2's node shapes are for its own example inputs, which `inputs` may not be
    return Traced("export", gm, notes)


def _fx_graph(model: nn.Module, inputs: Sequence[torch.Tensor], reference: Any) -> fx.GraphModule:
    """symbolic_trace, then run the graph once (ShapeProp stores shapes) and check it matches the model."""
    gm = _copy_modes(fx.symbolic_trace(model), model)
    propagated = _propagate_shapes(gm, inputs)
    error = output_rel_error(reference, propagated)
    if not error <= TRACE_MATCH_RTOL:
        raise RuntimeError(f"the traced graph's output differs from the model's (relative error {error:.2g})")
    return gm


def _copy_modes(gm: fx.GraphModule, model: nn.Module) -> fx.GraphModule:
    """Give each module of `gm` the train/eval mode of the model's module at the same path.

    The graph module itself, and the holder modules fx and export create along the paths of the submodules
    and parameters they keep, start in train mode whatever the model's mode; the model's own submodules
    (fx call_module targets) already have theirs.
    """
    modes = {name: module.training for name, module in model.named_modules()}
    for name, module in gm.named_modules():
        module.training = modes.get(name, model.training)
    return gm


def _propagate_shapes(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> Any:
    class _Run(nn.Module):  # run_model wants a module; ShapeProp is an Interpreter
        def __init__(self) -> None:
            super().__init__()
            self.gm = gm

        def forward(self, *args: torch.Tensor) -> Any:
            return ShapeProp(self.gm).propagate(*args)

    return run_model(_Run(), inputs)


def plain_graph_module(exported: torch.export.ExportedProgram) -> fx.GraphModule:
    """`exported.module()` as a plain GraphModule that pickles, loads and runs.

    `torch.save(ep.module())` fails in torch 2.14 (local lambdas, a `_guards_fn` submodule, a tracer class
    that cannot be rebuilt on load). Copy the graph into a fresh one, keep its pytree codegen (so dict and
    tuple inputs and outputs keep their structure), drop the guards call, and root it on a module that holds
    only the referenced parameters and buffers.
    """
    source = exported.module()
    graph = fx.Graph()
    out = graph.graph_copy(source.graph, {})
    graph.output(out)
    graph._codegen = source.graph._codegen  # noqa: SLF001 - the pytree codegen of the exported graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
    graph.lint()
    return fx.GraphModule(source, graph)


def _record_conv_calls(model: nn.Module, inputs: Sequence[torch.Tensor]) -> dict[str, list[tuple[int, ...]]]:
    calls: dict[str, list[tuple[int, ...]]] = {}

    def hook(name: str):
        def record(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            calls.setdefault(name, []).append(tuple(output.shape))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if isinstance(m, _CONV_TYPES)]
    try:
        run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls
