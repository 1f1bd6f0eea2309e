"""Get a graph of the model, for analysis: torch.fx.symbolic_trace, else torch.export, else fx with the modules it
cannot trace called whole, else a walk over its modules.

The graph says where the convs are, how they are called (shapes, shared modules, functional calls) and what
they see (receptive fields); it is never the converted model: the rewrite happens in the user's own module tree
(`rewrite.py`), so the Python of the model (train/eval behaviour, dynamic shapes) stays alive. The model is
analysed in eval mode, its deployment mode.

fx keeps module names (convs stay `call_module` nodes) but cannot follow shape-dependent control flow;
torch.export can, and gives an aten-level graph whose nodes record the module they belong to; value-dependent
control flow defeats both. Then fx traces again, calling each submodule it cannot trace as a whole ("leaf"):
the convs inside leaves are found as modules. When even the model's own forward cannot be traced, the conv
modules are found by forward hooks recording which ones run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from convert.errors import one_line
from convert.surgery.ops import ConvModule
from convert.surgery.verify import output_rel_error, run_model

__all__ = [
    "LeafTracer",
    "CallShapes",
    "logger",
    "plain_graph_module",
    "trace",
    "TRACE_MATCH_RTOL",
    "Traced",
    "TraceStrategy",
]

logger = logging.getLogger(__name__)

TraceStrategy = Literal["fx", "export", "fx-leaves", "module-walk"]
CallShapes = tuple[tuple[int, ...], tuple[int, ...]]  # (input shape, output shape) of one call of a module
TRACE_MATCH_RTOL = 1e-4  # a traced graph must reproduce the model's output this closely to be used


@dataclasses.dataclass
class Traced:
    """The model in the form the later stages rewrite."""

    strategy: TraceStrategy  # how the graph was obtained
    module: nn.Module  # fx.GraphModule for "fx", "export" and "fx-leaves"; the model itself for "module-walk"
    model: nn.Module  # what was traced: the module tree that `module`'s paths and the found convs refer to
    notes: list[str]  # why earlier paths were not taken, and what the graph cannot express
    # "fx-leaves" only: submodules the graph calls as a whole; conv modules inside them are swapped in place
    leaves: list[str] = dataclasses.field(default_factory=list)
    # conv modules the graph does not show (module walk, inside leaves) -> shapes of each call on the example input
    calls: dict[str, list[CallShapes]] = dataclasses.field(default_factory=dict)


def trace(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    reference: Any,
    exported: torch.export.ExportedProgram | None = None,
) -> Traced:
    """Trace `model` by the first strategy that works (the model is not changed; its graph refers to it).

    Args:
        model: the module to trace, in the mode to analyse it in.
        inputs: example inputs, positional.
        reference: the model's output on `inputs` (from `run_model`); an fx graph must reproduce it.
        exported: an ExportedProgram the model came from (a .pt2 file): its graph is used directly (and is the
            model: `model` is then that graph).
    """
    notes: list[str] = []
    if exported is not None:  # the model is the program's graph (`plain_graph_module`), or is made from it
        gm = model if isinstance(model, fx.GraphModule) else plain_graph_module(exported)
        _propagate_shapes(gm, inputs)  # a .pt2's node shapes are for its own example inputs, which `inputs` may not be
        return Traced("export", gm, gm, notes)
    try:
        return Traced("fx", _fx_graph(fx.Tracer(), model, inputs, reference, {}), model, notes)
    except Exception as e:  # noqa: BLE001 - any failure means "try the next path"
        notes.append(f"fx: {one_line(e)}")
        logger.info("fx.symbolic_trace failed (%s); trying torch.export", notes[-1])
    try:
        exported = torch.export.export(model, tuple(inputs))
    except Exception as e:  # noqa: BLE001
        notes.append(f"export: {one_line(e)}")
        logger.info("torch.export failed (%s); tracing with fx again, calling what it cannot trace whole", notes[-1])
    else:
        return Traced("export", plain_graph_module(exported), model, notes)
    tracer, calls = LeafTracer(), {}
    try:
        gm = _fx_graph(tracer, model, inputs, reference, calls)
    except Exception as e:  # noqa: BLE001
        notes.append(f"fx-leaves: {one_line(e)}")
        logger.info("fx with leaves failed too (%s); swapping modules in place", notes[-1])
    else:
        notes += [f"fx-leaves: {name or 'the model'} is called whole ({why})" for name, why in tracer.leaves.items()]
        notes.append("fx-leaves: functional conv calls (F.conv2d) inside modules called whole are not visible")
        return Traced("fx-leaves", gm, model, notes, list(tracer.leaves), calls)
    notes.append("module-walk: functional conv calls (F.conv2d) are not visible without a graph")
    return Traced("module-walk", model, model, notes, calls=_record_conv_calls(model, [""], inputs))


class LeafTracer(fx.Tracer):
    """An fx tracer that calls a submodule it cannot trace as a whole (a leaf) instead of failing.

    The nodes recorded while the submodule was traced are removed, and its call becomes one `call_module`
    node. Only the innermost failing modules become leaves: a failure inside a child is caught there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.leaves: dict[str, str] = {}  # module path -> why fx could not trace it

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        known, stack, calls = len(self.graph.nodes), dict(self.module_stack), dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # noqa: BLE001 - any failure makes the module a leaf
            for node in reversed(list(self.graph.nodes)[known:]):
                if node.op != "get_attr" and not node.users:  # parameter reads are cached: unused ones go at the end
                    self.graph.erase_node(node)
            self.module_stack.clear()
            self.module_stack.update(stack)
            self.num_calls = calls
            self.leaves[name] = one_line(e)
            return super().call_module(m, forward, args, kwargs)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        graph = super().trace(root, concrete_args)
        for node in reversed(list(graph.nodes)):
            if node.op == "get_attr" and not node.users:
                graph.erase_node(node)
        return graph


def _fx_graph(
    tracer: fx.Tracer,
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    reference: Any,
    calls: dict[str, list[CallShapes]],
) -> fx.GraphModule:
    """Trace, then run the graph once (ShapeProp stores shapes; convs inside leaves record theirs in `calls`)
    and check it matches the model."""
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    leaves = list(getattr(tracer, "leaves", {}))
    with _recording_conv_calls(gm, leaves, calls):
        propagated = _propagate_shapes(gm, inputs)
    error = output_rel_error(reference, propagated)
    if not error <= TRACE_MATCH_RTOL:
        raise RuntimeError(f"the traced graph's output differs from the model's (relative error {error:.2g})")
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


def _record_conv_calls(
    model: nn.Module, owners: list[str], inputs: Sequence[torch.Tensor]
) -> dict[str, list[CallShapes]]:
    calls: dict[str, list[CallShapes]] = {}
    with _recording_conv_calls(model, owners, calls):
        run_model(model, inputs)
    return calls


@contextlib.contextmanager
def _recording_conv_calls(model: nn.Module, owners: list[str], calls: dict[str, list[CallShapes]]) -> Iterator[None]:
    """Forward hooks on the conv modules inside `owners` ("" is the whole model) append each call's shapes."""

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            calls.setdefault(name, []).append((tuple(args[0].shape) if args else (), tuple(output.shape)))

        return record

    convs = {
        name: m
        for owner in owners
        for name, m in model.get_submodule(owner).named_modules(prefix=owner)
        if isinstance(m, ConvModule)
    }
    handles = [m.register_forward_hook(hook(name)) for name, m in convs.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
