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
import torch.nn.functional as F
from conftest import assert_outputs_close, conv_macs, converted_rows, count_params, forward, leaves, skipped_rows
from torch import fx, nn
from torch.utils import _pytree as pytree
from zoo_models import ZOO

from convert import ConvertConfig, OnnxConfig, convert_model, export_onnx
from convert.surgery.verify import output_rel_error

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

ZOO_TOL = 1e-4  # relative, float32, whole deep models
FLOAT32_NOISE = 2.5  # x the original's own float32 error (vs float64) that another float32 computation may show
EXACT_TOL = 1e-10  # relative, float64
# ONNX: one batch size, fixed. The dynamic batch and its second parity batch are the exporter's business, tested
# in test_onnx_export.py; here each model's ops and graph are, at half the export time. Exports take most of
# this suite's time: the rank-1 model is exported for the fast models here, and for all in benchmarks/coverage.py.


def in_float64(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> object:
    return forward(copy.deepcopy(model).double(), *(t.double() for t in inputs))


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
    # the converted model is the whole model, what the example input does not reach included (e.g. GoogLeNet's
    # auxiliary heads, which run in train mode only)
    assert (totals.params_before, totals.params_after) == (count_params(model), count_params(low.model))
    assert totals.params_before - totals.params_after == sum(r.params_before - r.params_after for r in rows)
    assert totals.macs_before - totals.macs_after == sum(r.macs_before - r.macs_after for r in rows)
    assert sum(r.macs_before for r in rows) <= totals.macs_before
    assert totals.macs_after < totals.macs_before and totals.params_after < totals.params_before
    if not ZOO[name].slow:
        assert export_onnx(low.model, inputs, tmp_path / "rank1.onnx", onnx).passed


# ---------------------------------------------------------------------------------------------------------------
# Awkward graphs, through conversion and ONNX export.


class Decoder(nn.Module):
    """Two inputs, a nested dict/list/tuple output, a conv module called at two sites, a functional conv on a
    parameter, a grouped conv, and transposed convs (module and functional) that upsample, U-Net style."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.wt = nn.Parameter(torch.randn(4, 2, 2, 2) * 0.3)
        self.signal = nn.Conv1d(5, 6, 3, dilation=2)

    def forward(self, image: torch.Tensor, signal: torch.Tensor) -> dict[str, object]:
        x = torch.relu(F.conv2d(image, self.w, padding=1))
        x = self.shared(torch.relu(self.shared(x)))
        up = self.up(self.grouped(x))
        return {"maps": [up, F.conv_transpose2d(up, self.wt, stride=2)], "pair": (self.signal(signal), x.mean())}


def test_awkward_graph_converts_and_exports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Decoder().eval()
    inputs = (torch.randn(2, 3, 8, 8), torch.randn(2, 5, 12))

    result = convert_model(model, inputs, ConvertConfig(rank="full", include_grouped=True))

    rows = {layer.name: layer for layer in result.report.layers}
    assert set(rows) == {"w", "shared", "grouped", "up", "wt", "signal"}
    assert all(layer.status == "converted" and layer.rank == layer.full_rank for layer in rows.values())
    assert rows["shared"].calls == 2
    output = forward(result.model, *inputs)
    assert_outputs_close(output, forward(model, *inputs))
    assert pytree.tree_structure(output) == pytree.tree_structure(forward(model, *inputs))
    export = export_onnx(result.model, inputs, tmp_path / "decoder.onnx")  # dynamic batch: two parity batches
    assert export.passed and [p.batch for p in export.parity] == [2, 3]


class ValueGated(nn.Module):
    """Value-dependent control flow in its own forward: neither fx nor torch.export can trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.inner = nn.Sequential(nn.Conv2d(6, 6, (1, 3), padding=(0, 1)), nn.BatchNorm2d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > -1e9:
            x = x * 1.5
        return self.inner(self.conv(x))


class LeafNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.gated = ValueGated()
        self.w = nn.Parameter(torch.randn(4, 6, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gated(torch.relu(self.stem(x)))
        return F.conv2d(self.gated(x), self.w)  # the untraceable module at two sites


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_untraceable_submodule_called_whole_and_converted_inside(mode: str) -> None:
    torch.manual_seed(0)
    model = LeafNet().train(mode == "train")
    x = torch.randn(2, 3, 7, 7)

    result = convert_model(model, x, ConvertConfig(rank="full"))

    report = result.report
    assert report.trace == "fx-leaves"
    assert any(note.startswith("fx-leaves: gated is called whole") for note in report.trace_notes)
    rows = {layer.name: layer for layer in report.layers}
    assert set(rows) == {"stem", "w", "gated.conv", "gated.inner.0"}
    assert all(layer.status == "converted" and layer.rank == layer.full_rank for layer in rows.values())
    assert rows["gated.conv"].calls == 2 and rows["gated.conv"].output_shape == [2, 6, 7, 7]
    assert rows["gated.conv"].macs_before == 2 * conv_macs(6, 6, (3, 3), (2, 6, 7, 7))
    assert rows["stem"].receptive_field == [3, 3]  # graph convs keep their graph facts
    assert isinstance(result.model, fx.GraphModule) and type(result.model.gated) is ValueGated
    assert isinstance(result.model.gated.conv, nn.Sequential)
    assert_outputs_close(forward(result.model, x), forward(model, x))
    other = mode != "train"  # the leaf is a real module: switching modes reaches its BatchNorm
    assert_outputs_close(forward(result.model.train(other), x), forward(model.train(other), x))


class WeightReader(ValueGated):
    """Reads its conv's weight outside the conv call, where no graph shows it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.conv.weight.mean()


def test_untraceable_submodule_reading_a_conv_weight_reads_the_replacement_s() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), WeightReader()).eval()
    x = torch.randn(2, 3, 7, 7)

    result = convert_model(model, x, ConvertConfig(rank="full"))

    assert result.report.trace == "fx-leaves"
    rows = {layer.name: layer for layer in result.report.layers}
    assert rows["0"].status == rows["1.conv"].status == rows["1.inner.0"].status == "converted"
    # the forward reads the dense weight the replacement computes: at full rank, the original's
    torch.testing.assert_close(result.model[1].conv.weight, model[1].conv.weight, rtol=1e-5, atol=1e-6)
    assert type(result.model) is nn.Sequential and type(result.model[1]) is WeightReader
    assert_outputs_close(forward(result.model, x), forward(model, x))
