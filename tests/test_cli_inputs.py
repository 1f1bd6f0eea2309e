"""Inputs by name (`--input-shape NAME=N,C,...`) and `--dtype`, through the real CLI (subprocess); their wire form."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import onnx
import pytest
import torch
from test_cli import assert_refused, ok, run, user_module

from convert.job import JobOptions
from server.wire import from_proto, to_proto

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

MODELS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class VisionText(nn.Module):  # a Hugging Face-like forward: keyword names, optional inputs after the image
        def __init__(self):
            super().__init__()
            self.image = nn.Conv2d(3, 8, 3, padding=1)
            self.mask = nn.Conv2d(1, 8, 3, padding=1)

        def forward(self, pixel_values=None, pixel_mask=None, labels=None):
            return self.image(pixel_values) * torch.sigmoid(self.mask(pixel_mask))


    class KeywordOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, *, pixel_values):
            return self.conv(pixel_values)


    def vision():
        return VisionText()


    def keyword_only():
        return KeywordOnly()


    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
    """
)
SHAPE = ["--input-shape", "1,3,16,16"]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return user_module(tmp_path, monkeypatch, "models", MODELS)


def test_named_inputs_in_any_order_reach_their_parameters(work: Path) -> None:
    """Given mask first, then image: each shape goes to the parameter it names; at full rank the model is exact."""
    args = ["--input-shape", "pixel_mask=1,1,16,16", "--input-shape", "pixel_values=1,3,16,16", "--rank", "full"]
    ok(run(work, "models:vision", *args, "--onnx", "-o", "out"))
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["input_shapes"] == [[1, 3, 16, 16], [1, 1, 16, 16]]  # the forward's order
    assert report["output_rel_error"] < 1e-5
    assert report["onnx"]["original"]["passed"] and report["onnx"]["converted"]["passed"]
    converted = torch.load(work / "out" / "model.pt", weights_only=False)
    image, mask = torch.randn(1, 3, 16, 16), torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert converted(pixel_values=image, pixel_mask=mask).shape == (1, 8, 16, 16)


def test_float16_casts_the_model_and_its_onnx_files(work: Path) -> None:
    ok(run(work, "models:build", *SHAPE, "--dtype", "float16", "--rank", "full", "--onnx", "-o", "out"))
    converted = torch.load(work / "out" / "model.pt", weights_only=False)
    assert {p.dtype for p in converted.parameters()} == {torch.float16}
    for name in ("original.onnx", "model.onnx"):
        graph = onnx.load(work / "out" / name).graph
        assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16, name
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["input_dtype"] == "float16"
    assert report["onnx"]["atol"] == 1e-2  # float16's tolerance, not float32's 1e-4
    assert report["onnx"]["original"]["passed"] and report["onnx"]["converted"]["passed"]


def test_bfloat16_converts_without_onnx(work: Path) -> None:
    ok(run(work, "models:build", *SHAPE, "--dtype", "bfloat16", "-o", "out"))
    converted = torch.load(work / "out" / "model.pt", weights_only=False)
    assert {p.dtype for p in converted.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["models:build", *SHAPE, "--input-dtype", "float16"],
            r"model's weights are float32 and the inputs float16: "
            r"set --input-dtype float32, or cast the model with --dtype float16",
        ),
        (["models:keyword_only", *SHAPE], r"forward needs keyword arguments pixel_values"),
        (["models:keyword_only", "--input-shape", "pixel_values=1,3,8,8"], r"takes `pixel_values` by keyword only"),
        (
            ["models:vision", "--input-shape", "pixel_mask=1,1,8,8"],
            r"takes `pixel_values` before pixel_mask: give "
            r"--input-shape for it too",
        ),
        (
            ["models:vision", "--input-shape", "image=1,3,8,8"],
            r"no parameter `image`: its inputs are pixel_values, "
            r"pixel_mask, labels",
        ),
        (
            ["models:vision", "--input-shape", "pixel_values=1,3,8,8", "--input-shape", "1,1,8,8"],
            r"name every "
            r"--input-shape or none",
        ),
        (["models:vision", "--input-shape", "a=1,3,8,8", "--input-shape", "a=1,3,8,8"], r"name a parameter twice"),
        (["models:build", "--input-shape", "9x=1,3,8,8"], r"use N,C,\.\.\. or NAME=N,C,\.\.\."),
        (["models:build", *SHAPE, "--dtype", "bfloat16", "--onnx"], r"no bfloat16 convolution: use --dtype float16"),
        (["models:build", *SHAPE, "--dtype", "int8"], r"argument --dtype: invalid choice"),
        (["inspect", "models:build", *SHAPE, "--input-dtype", "float16"], r"model's weights are float32"),
        (["bench", "a.onnx", "--runtime", "torch", "--input-shape", "x=1,3,8,8"], r"by position \(N,C,\.\.\.\)"),
    ],
    ids=[
        "dtype-mismatch",
        "keyword-only-unnamed",
        "keyword-only-named",
        "named-after-a-gap",
        "unknown-name",
        "some-named",
        "named-twice",
        "bad-name",
        "bfloat16-onnx",
        "unknown-dtype",
        "inspect-dtype-mismatch",
        "bench-named",
    ],
)
def test_input_mistakes(work: Path, args: list[str], expected: str) -> None:
    if args[0] not in ("inspect", "bench"):
        args = [*args, "-o", "out"]
    assert_refused(work, args, expected)


def test_named_inputs_and_dtype_cross_the_wire() -> None:
    options = JobOptions(
        "models:vision", input_shapes=((1, 3, 8, 8), (1, 1, 8, 8)), input_names=("pixel_values", "pixel_mask")
    )
    message = to_proto(options)
    assert [shape.name for shape in message.input_shapes] == ["pixel_values", "pixel_mask"]
    assert from_proto(message, model="models:vision").input_names == ("pixel_values", "pixel_mask")
    half = to_proto(JobOptions("models:build", input_shapes=((1, 3, 8, 8),), model_dtype="float16"))
    assert from_proto(half, model="models:build").model_dtype == "float16"
    assert from_proto(to_proto(JobOptions("models:build")), model="models:build").input_names is None
