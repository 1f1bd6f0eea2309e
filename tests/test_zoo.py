"""The whole pipeline on real architectures nobody here wrote (tests/zoo_models.py), one conversion per rank.

At full rank: the converted model computes the original's function (exactly, in float64; in float32 within
1e-4, or, for a model whose own float32 rounding is of that order, within a small multiple of it), and exports
to ONNX with ONNX Runtime matching PyTorch. At rank 1: it converts, runs, really differs from the original (so
the full-rank checks can fail), exports (the fast models; benchmarks/coverage.py exports all), and the report's
totals agree with its per-layer rows and with the models themselves.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import converted_rows, count_params, forward, leaves, skipped_rows
from torch.utils import _pytree as pytree
from zoo_models import ZOO

from convert import ConvertConfig, OnnxConfig, convert_model, export_onnx
from convert.verify import output_rel_error

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

ZOO_TOL = 1e-4  # relative, float32, whole deep models
FLOAT32_NOISE = 2.5  # x the original's own float32 error (vs float64) that another float32 computation may show
EXACT_TOL = 1e-10  # relative, float64
# ONNX: one batch size, fixed. The dynamic batch and its second parity batch are the exporter's business, tested
# in test_onnx_export.py; here each model's ops and graph are, at half the export time. Exports take most of
# this suite's time: the rank-1 model is exported for the fast models here, and for all in benchmarks/coverage.py.


def in_float64(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> object:
    return forward(copy.deepcopy(model).double(), *(t.double() for t in inputs))


def reached_params(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Parameters of the modules that run on `inputs` (seen by forward hooks), each counted once."""
    called: list[torch.nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, *_: called.append(m)) for m in model.modules()]
    with torch.no_grad():
        model(*inputs)  # eval mode: changes nothing
    for hook in hooks:
        hook.remove()
    params = {id(p): p.numel() for m in called for p in m.parameters(recurse=False)}
    return sum(params.values())


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if m.slow else []) for n, m in ZOO.items()])
def test_zoo_model(name: str, tmp_path: Path) -> None:
    model = ZOO[name].model()
    inputs = ZOO[name].inputs()
    expected = forward(model, *inputs)

    full = convert_model(model, inputs, ConvertConfig(rank="full"))

    report = full.report
    assert report.trace == "fx", report.trace_notes
    assert converted_rows(report) and all(layer.rank == layer.full_rank for layer in converted_rows(report))
    assert all(layer.reason for layer in skipped_rows(report))
    output = forward(full.model, *inputs)
    assert pytree.tree_structure(output) == pytree.tree_structure(expected)  # OrderedDict stays OrderedDict
    exact = in_float64(model, inputs)
    assert output_rel_error(exact, in_float64(full.model, inputs)) <= EXACT_TOL  # the surgery itself is exact
    # float32: within 1e-4, unless the original's own float32 rounding is of that order (then within a small
    # multiple of it: two float32 computations of one ill-conditioned function differ by about that much)
    tol = max(ZOO_TOL, FLOAT32_NOISE * output_rel_error(exact, expected))
    assert output_rel_error(exact, output) <= tol
    assert report.output_rel_error == pytest.approx(output_rel_error(expected, output), rel=1e-3)
    assert report.output_rel_error <= tol
    onnx = OnnxConfig(dynamic_batch=False, atol=tol)
    exported = export_onnx(full.model, inputs, tmp_path / "full.onnx", onnx)
    assert exported.passed and exported.parity[0].max_rel <= tol

    low = convert_model(model, inputs, ConvertConfig(rank=1))

    rows = low.report.layers
    assert [(r.name, r.status) for r in rows] == [(r.name, r.status) for r in report.layers]
    assert all(layer.rank == 1 for layer in converted_rows(low.report))
    output = forward(low.model, *inputs)
    assert [t.shape for t in leaves(output)] == [t.shape for t in leaves(expected)]
    assert output_rel_error(expected, output) > 0.1  # the convs decide the output: the checks above can fail
    totals = low.report.totals
    assert (totals.converted, totals.skipped) == (len(converted_rows(low.report)), len(skipped_rows(low.report)))
    assert (totals.params_before, totals.params_after) == (reached_params(model, inputs), count_params(low.model))
    if totals.params_before < count_params(model):  # e.g. GoogLeNet's auxiliary heads, which run in train mode only
        assert any("not reach" in note for note in low.report.trace_notes)
    assert totals.params_before - totals.params_after == sum(r.params_before - r.params_after for r in rows)
    assert totals.macs_before - totals.macs_after == sum(r.macs_before - r.macs_after for r in rows)
    assert sum(r.macs_before for r in rows) <= totals.macs_before
    assert totals.macs_after < totals.macs_before and totals.params_after < totals.params_before
    if not ZOO[name].slow:
        assert export_onnx(low.model, inputs, tmp_path / "rank1.onnx", onnx).passed
