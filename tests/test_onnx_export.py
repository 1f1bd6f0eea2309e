"""ONNX export: ONNX Runtime against PyTorch for the original and the converted model of every conv dimension
and padding mode, the dynamic batch, static shapes, the TorchScript fallback, external data, and the parity
check's own failure path."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from conftest import forward
from torch import nn

import convert.runtime.export
from convert import ConvertConfig, ConvertError, OnnxConfig, ParityError, convert_model, export_onnx, open_session
from convert.runtime.parity import differences
from convert.runtime.sessions import validate_onnx_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SHAPES = {1: (2, 4, 11), 2: (2, 4, 9, 10), 3: (2, 4, 6, 7, 6)}
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
TOL = 1e-5  # ONNX Runtime against PyTorch, relative to max |output|, float32


def ort_run(path, *inputs: torch.Tensor) -> list[np.ndarray]:
    # through open_session: a benchmark earlier in this process made ORT's shared thread pool, which every later
    # session must use (a session with a pool of its own is refused then)
    session = open_session(path, "cpu", threads=1).session
    assert session.get_providers() == ["CPUExecutionProvider"]
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})


def assert_matches(got: np.ndarray, expected: torch.Tensor, tol: float = TOL) -> None:
    expected = expected.detach().numpy()
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= tol * float(np.abs(expected).max())


def batch_dim(path) -> onnx.TensorShapeProto.Dimension:
    return onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0]


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_parity_original_and_converted_at_full_rank(tmp_path, dims: int, mode: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(CONVS[dims](4, 6, 3, padding=1, padding_mode=mode), nn.ReLU()).eval()
    x = torch.randn(SHAPES[dims])
    converted = convert_model(model, x, ConvertConfig(rank="full")).model

    exports = {
        name: export_onnx(m, x, tmp_path / f"{name}.onnx")
        for name, m in (("original", model), ("converted", converted))
    }

    for export in exports.values():
        assert export.exporter == "dynamo" and export.notes == [] and export.passed
        assert export.dynamic_batch and not export.external_data and export.opset >= 18
        assert [p.batch for p in export.parity] == [2, 3]  # the example input, then another batch size
        assert all(p.error is None and p.max_rel <= TOL for p in export.parity)
    # full rank: the converted model's ONNX file computes the *original* model, at any batch size
    for batch in (1, 5):
        xb = torch.randn(batch, *x.shape[1:])
        (got,) = ort_run(tmp_path / "converted.onnx", xb)
        assert_matches(got, forward(model, xb))


def test_grouped_target_parity(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1)).eval()
    x = torch.randn(2, 4, 9, 10)
    converted = convert_model(model, x, ConvertConfig(target="grouped", groups=2, rank="full")).model
    export = export_onnx(converted, x, tmp_path / "model.onnx")
    assert export.passed
    (got,) = ort_run(tmp_path / "model.onnx", x)
    assert_matches(got, forward(model, x))


class TwoInOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(3, 4, 3, padding=1)
        self.signal = nn.Conv1d(2, 4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(x).mean(dim=(2, 3)), self.signal(y)


def test_dynamic_batch_two_inputs_and_outputs_batch_1_example(tmp_path) -> None:
    """A batch-1 example must not bake the batch into the graph (torch.export specializes size 1)."""
    torch.manual_seed(0)
    model = TwoInOut().eval()
    inputs = (torch.randn(1, 3, 8, 8), torch.randn(1, 2, 7))
    export = export_onnx(model, inputs, tmp_path / "m.onnx")
    assert export.passed and [p.batch for p in export.parity] == [1, 3]
    graph = onnx.load(tmp_path / "m.onnx").graph
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.input)
    assert all(o.type.tensor_type.shape.dim[0].dim_param for o in graph.output)
    batch = (torch.randn(4, 3, 8, 8), torch.randn(4, 2, 7))
    for got, expected in zip(ort_run(tmp_path / "m.onnx", *batch), forward(model, *batch), strict=True):
        assert_matches(got, expected)


def test_static_shapes(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    export = export_onnx(model, x, tmp_path / "m.onnx", OnnxConfig(dynamic_batch=False))
    assert export.passed and not export.dynamic_batch
    assert [p.batch for p in export.parity] == [2]  # no other batch size can run
    assert batch_dim(tmp_path / "m.onnx").dim_value == 2
    (got,) = ort_run(tmp_path / "m.onnx", x)
    assert_matches(got, forward(model, x))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        ort_run(tmp_path / "m.onnx", torch.randn(3, 3, 8, 8))


def test_torchscript_fallback(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("dynamo cannot export this\nsecond line")

    monkeypatch.setattr(convert.runtime.export, "_export_dynamo", broken)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU()).eval()
    x = torch.randn(2, 3, 8, 8)
    converted = convert_model(model, x, ConvertConfig(rank="full")).model

    export = export_onnx(converted, x, tmp_path / "m.onnx", OnnxConfig(opset=17))

    assert export.exporter == "torchscript" and export.opset == 17 and export.passed
    assert export.notes == [
        "the dynamo exporter failed (RuntimeError: dynamo cannot export this); used the TorchScript-based exporter"
    ]
    assert batch_dim(tmp_path / "m.onnx").dim_param  # dynamic batch with this exporter too
    xb = torch.randn(5, 3, 8, 8)
    (got,) = ort_run(tmp_path / "m.onnx", xb)
    assert_matches(got, forward(model, xb))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # its private folder is gone


def test_both_exporters_fail_is_one_line(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(convert.runtime.export, "_export_dynamo", broken)
    monkeypatch.setattr(convert.runtime.export, "_export_torchscript", broken)
    with pytest.raises(ConvertError, match=r"^ONNX export of m\.onnx failed with both exporters") as caught:
        export_onnx(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("fallback", [False, True], ids=["dynamo", "torchscript"])
def test_external_data_next_to_the_file(tmp_path, monkeypatch: pytest.MonkeyPatch, fallback: bool) -> None:
    """Over 2 GB the weights go to one `<file>.data` next to the .onnx (threshold lowered to test it)."""
    monkeypatch.setattr(convert.runtime.export, "EXTERNAL_DATA_BYTES", 0)
    if fallback:
        monkeypatch.setattr(convert.runtime.export, "_export_dynamo", lambda *a, **k: 1 / 0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval()
    x = torch.randn(2, 3, 12, 12)
    export = export_onnx(model, x, tmp_path / "m.onnx")
    assert export.external_data and export.passed
    assert export.exporter == ("torchscript" if fallback else "dynamo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    validate_onnx_file(tmp_path / "m.onnx")  # its location is inside the folder
    (got,) = ort_run(tmp_path / "m.onnx", x)
    assert_matches(got, forward(model, x))


class ExportsSomethingElse(nn.Module):
    """Adds 1 only while being exported: ONNX Runtime then disagrees with PyTorch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + 1.0 if torch.compiler.is_exporting() else y


def test_parity_failure(tmp_path) -> None:
    model, x = ExportsSomethingElse().eval(), torch.randn(1, 3, 8, 8)
    export = export_onnx(model, x, tmp_path / "m.onnx", strict=False)
    assert export.passed is False and len(export.parity) == 2
    assert all(p.max_rel > 0.01 and p.error is None for p in export.parity)
    with pytest.raises(ParityError, match=r"^ONNX Runtime does not match PyTorch within `atol`=0\.0001: m\.onnx"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").is_file()  # kept for inspection


def test_model_and_its_mode_left_alone(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    state = copy.deepcopy(model.state_dict())
    export = export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx")
    assert export.passed  # exported and compared in eval mode: no dropout, running statistics
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(("options", "message"), [({"opset": 3}, "opset 3 is not valid"), ({"atol": 0}, "atol 0")])
def test_bad_config(options: dict, message: str) -> None:
    with pytest.raises(ConvertError, match=message):
        OnnxConfig(**options)


def test_differences_handle_nan_and_infinity() -> None:
    ref = [np.array([1.0, np.nan, np.inf, -4.0])]
    assert differences(ref, [np.array([1.5, np.nan, np.inf, -4.0], np.float32)]) == (0.5, 0.5 / 4.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        differences(ref, [np.array([1.0, 0.0, np.inf, -4.0], np.float32)])
    with pytest.raises(ValueError, match="output shapes"):
        differences(ref, [np.zeros(3, np.float32)])


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(1, -1))  # batch 1 only


def test_model_that_fixes_its_batch(tmp_path) -> None:
    model, x = FixedBatch().eval(), torch.randn(1, 3, 8, 8)
    export = export_onnx(model, x, tmp_path / "m.onnx", strict=False)
    assert export.exporter == "torchscript" and export.notes[0].startswith("the dynamo exporter failed (")
    assert export.passed is False and export.parity[0].error is None
    assert export.parity[1].error.startswith("batch 3: PyTorch rejects it (RuntimeError: mat1 and mat2")
    assert export.parity[1].error.endswith("if the model fixes its batch, use `dynamic_batch`=False")
    export = export_onnx(model, x, tmp_path / "m.onnx", OnnxConfig(dynamic_batch=False))
    assert export.exporter == "dynamo" and export.passed
