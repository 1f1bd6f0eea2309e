"""Get a graph of the model: torch.fx.symbolic_trace, else torch.export, else fx with the modules it cannot
trace called whole, else a walk over its modules.

fx keeps module names (convs stay `call_module` nodes) but cannot follow shape-dependent control flow;
torch.export can, and gives an aten-level graph; value-dependent control flow defeats both. Then fx traces
again, calling each submodule it cannot trace as a whole ("leaf"): the convs inside leaves are swapped as
modules. When even the model's own forward cannot be traced, the conv modules are swapped in place, with
forward hooks recording which ones run.

torch.export bakes train/eval behaviour into the aten graph (BatchNorm's batch statistics, dropout). The
modules whose graph differs between the two modes (found by exporting again with every mode flipped) are
put back into the graph as `call_module` nodes of the modules themselves, so `.train()`/`.eval()` on the
result still switches what they compute.
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
    """Trace `model` (which the caller owns and may be changed) by the first path that works.

    Args:
        model: the module to trace; later stages rewrite what this returns, so pass a copy.
        inputs: example inputs, positional.
        reference: the model's output on `inputs` (from `run_model`); an fx graph must reproduce it.
        exported: an ExportedProgram the model came from (a .pt2 file): its graph is used directly.
    """
    notes: list[str] = []
    if exported is not None:
        gm = plain_graph_module(exported)
        _propagate_shapes(gm, inputs)  # a .pt2's node shapes are for its own example inputs, which `inputs` may not be
        return Traced("export", gm, notes)
    try:
        return Traced("fx", _fx_graph(fx.Tracer(), model, inputs, reference, {}), notes)
    except Exception as e:  # noqa: BLE001 - any failure means "try the next path"
        notes.append(f"fx: {one_line(e)}")
        logger.info("fx.symbolic_trace failed (%s); trying torch.export", notes[-1])
    try:
        exported = torch.export.export(model, tuple(inputs))
    except Exception as e:  # noqa: BLE001
        notes.append(f"export: {one_line(e)}")
        logger.info("torch.export failed (%s); tracing with fx again, calling what it cannot trace whole", notes[-1])
    else:
        gm = plain_graph_module(exported)
        notes += _restore_mode_dependent_modules(gm, model, inputs)
        return Traced("export", _copy_modes(gm, model), notes)
    tracer, calls = _LeafTracer(), {}
    try:
        gm = _fx_graph(tracer, model, inputs, reference, calls)
    except Exception as e:  # noqa: BLE001
        notes.append(f"fx-leaves: {one_line(e)}")
        logger.info("fx with leaves failed too (%s); swapping modules in place", notes[-1])
    else:
        notes += [f"fx-leaves: {name or 'the model'} is called whole ({why})" for name, why in tracer.leaves.items()]
        notes.append("fx-leaves: functional conv calls (F.conv2d) inside modules called whole are not visible")
        return Traced("fx-leaves", gm, notes, list(tracer.leaves), calls)
    notes.append("module-walk: functional conv calls (F.conv2d) are not visible without a graph")
    return Traced("module-walk", model, notes, calls=_record_conv_calls(model, [""], inputs))


class _LeafTracer(fx.Tracer):
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
        graph._tracer_cls = fx.Tracer  # noqa: SLF001 - what a pickled GraphModule re-traces with; not this class
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
    output = next(node for node in graph.nodes if node.op == "output")
    with graph.inserting_before(output):
        output.args = (_keep_mapping_types(graph, output.args[0], reference),)
    gm = _copy_modes(fx.GraphModule(tracer.root, graph, type(model).__name__), model)
    leaves = list(getattr(tracer, "leaves", {}))
    with _recording_conv_calls(gm, leaves, calls):
        propagated = _propagate_shapes(gm, inputs)
    error = output_rel_error(reference, propagated)
    if not error <= TRACE_MATCH_RTOL:
        raise RuntimeError(f"the traced graph's output differs from the model's (relative error {error:.2g})")
    return gm


def _keep_mapping_types(graph: fx.Graph, value: Any, reference: Any) -> Any:
    """The graph's output `value`, with each mapping the model returns as a dict subclass (OrderedDict, as
    torchvision's segmentation models and feature pyramids do) built as that type again: fx records every
    mapping as a plain dict. (A pickled GraphModule is re-traced when loaded, which makes it a dict again.)"""
    if isinstance(reference, dict) and isinstance(value, dict) and value.keys() == reference.keys():
        items = [(key, _keep_mapping_types(graph, value[key], reference[key])) for key in value]
        if type(reference) is dict:
            return dict(items)
        return graph.call_function(type(reference), (items,))
    if isinstance(reference, list | tuple) and isinstance(value, list | tuple) and len(value) == len(reference):
        items = [_keep_mapping_types(graph, v, r) for v, r in zip(value, reference, strict=True)]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


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


def _restore_mode_dependent_modules(gm: fx.GraphModule, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[str]:
    """Put back, as `call_module` nodes, the modules whose exported graph depends on their train/eval mode.

    Exports `model` again with every module's mode flipped and compares, per module, the ops each export
    records for it. A module that differs and is a leaf (no children) taking and giving one tensor becomes a
    call of the module itself (from `model`, which the caller owns), at each of its call sites. Returns notes
    on what stays baked in.
    """
    with _modes_flipped(model):
        try:
            other = torch.export.export(model, tuple(inputs)).module()
        except Exception as e:  # noqa: BLE001 - the other mode cannot be exported: keep this one's graph
            return [f"export: the graph keeps the train/eval behaviour it was traced in ({one_line(e)})"]
    ours, theirs = _ops_per_module(gm.graph), _ops_per_module(other.graph)
    notes = []
    for path in sorted(p for p in ours.keys() | theirs.keys() if ours.get(p) != theirs.get(p)):
        problem = _collapse_module_calls(gm, model, path)
        if problem:
            mode = "train" if model.get_submodule(path).training else "eval"
            notes.append(f"export: {path or 'the model'} {problem}: the graph keeps its {mode}-mode behaviour")
    gm.graph.lint()
    gm.recompile()
    return notes


@contextlib.contextmanager
def _modes_flipped(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, training in modes:
            m.training = not training
        yield
    finally:
        for m, training in modes:
            m.training = training


def _owner(node: fx.Node) -> tuple[str, str] | None:
    """(module path, key of this call of it) of the innermost module a node of an exported graph belongs to."""
    stack = node.meta.get("nn_module_stack")
    if node.op != "call_function" or not stack:
        return None
    key, (path, _type) = list(stack.items())[-1]
    return path, key


def _ops_per_module(graph: fx.Graph) -> dict[str, list[tuple[str, tuple[Any, ...]]]]:
    """Per module path, the ops recorded for it with their constant arguments (node arguments as "%")."""
    ops: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
    for node in graph.nodes:
        owner = _owner(node)
        if owner is not None:
            constants = fx.node.map_arg((node.args, node.kwargs), lambda _: "%")
            ops.setdefault(owner[0], []).append((str(node.target), repr(constants)))
    return ops


def _collapse_module_calls(gm: fx.GraphModule, model: nn.Module, path: str) -> str | None:
    """Replace the nodes of each call of module `path` by one `call_module` node; the reason when it cannot."""
    module = model.get_submodule(path)
    if not path or any(True for _ in module.children()):
        return "reads its train/eval mode in its own forward"
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        owner = _owner(node)
        if owner is not None and owner[0] == path:
            calls.setdefault(owner[1], []).append(node)
    if not calls:
        return "computes nothing in this mode"
    everything = {node for nodes in calls.values() for node in nodes}
    state = {node for node in everything if _returns_mutated_input(node)}  # e.g. num_batches_tracked.add_(1)
    sites = []
    for nodes in calls.values():
        inside = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside and a not in state}
        if any(a.op == "get_attr" and not a.target.startswith(f"{path}.") for a in inputs):
            return "reads tensors of other modules"
        inputs = {a for a in inputs if a.op != "get_attr"}
        outputs = [n for n in nodes if n not in state and any(user not in inside for user in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            return "takes or gives more than one tensor"
        sites.append((inputs.pop(), outputs[0]))
    gm.add_submodule(path, module)  # in place of the holder of its parameters; holders made along the path
    replacements = []
    for data, output in sites:  # all calls first: one call's output may be the next call's input
        with gm.graph.inserting_before(output):
            call = gm.graph.call_module(path, (data,))
        call.meta = dict(output.meta)
        replacements.append((output, call))
    for output, call in replacements:
        output.replace_all_uses_with(call)
    for node in reversed(list(gm.graph.nodes)):
        if node in everything or (node.op == "get_attr" and not node.users and node.target.startswith(f"{path}.")):
            gm.graph.erase_node(node)
    return None


def _returns_mutated_input(node: fx.Node) -> bool:
    """An in-place op (its result is an input it wrote to): state carried between calls, not data."""
    returns = getattr(getattr(node.target, "_schema", None), "returns", None)
    return bool(returns) and returns[0].alias_info is not None and returns[0].alias_info.is_write


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
