"""convert.load: input shapes, example inputs, and load_model's sources and errors (in-process, fast)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import uuid

import pytest
import torch
from torch import nn

from convert.errors import ConvertError
from convert.load import DTYPES, load_model, make_inputs, parse_input_shape, parse_model_arg, resolve_spec

# --- parse_input_shape -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("1,3,224,224", (1, 3, 224, 224)),
        ("1x3x16x16", (1, 3, 16, 16)),
        ("8", (8,)),
        ("1, 4, 50", (1, 4, 50)),
    ],
)
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "1,x,3", "1,0,3", "1,-2,3", "1,,3", "abc", "1.5,3", ","])
def test_parse_input_shape_rejects(text: str) -> None:
    with pytest.raises(ConvertError, match=r"is not valid: use comma-separated positive sizes, e\.g\. 1,3,224,224"):
        parse_input_shape(text)


# --- make_inputs -------------------------------------------------------------------------------------------------


def test_make_inputs_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = make_inputs([(1, 3, 8, 8), (2, 4, 5)])
    assert torch.equal(torch.get_rng_state(), state)
    second = make_inputs([(1, 3, 8, 8), (2, 4, 5)])
    assert [tuple(t.shape) for t in first] == [(1, 3, 8, 8), (2, 4, 5)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert all(t.dtype == torch.float32 for t in first)
    assert first[0].std() > 0.5  # random normal values, not zeros or a constant
    # the first input does not depend on what follows it
    assert torch.equal(make_inputs([(1, 3, 8, 8)])[0], first[0])


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_make_inputs_dtypes(dtype: str) -> None:
    (tensor,) = make_inputs([(2, 3, 4)], dtype)
    assert tensor.dtype == DTYPES[dtype]
    assert tuple(tensor.shape) == (2, 3, 4)
    assert torch.equal(tensor, make_inputs([(2, 3, 4)], dtype)[0])
    if DTYPES[dtype].is_floating_point:
        # the same draw in every float dtype, only rounded
        reference = make_inputs([(2, 3, 4)], "float64")[0]
        assert torch.allclose(tensor.double(), reference, rtol=1e-2, atol=1e-2)
    else:
        assert set(tensor.unique().tolist()) <= {0, 1}


def test_make_inputs_rejects_unknown_dtype() -> None:
    with pytest.raises(ConvertError, match="input dtype 'int8' is not supported: use one of float32"):
        make_inputs([(1, 3)], "int8")


# --- load_model --------------------------------------------------------------------------------------------------

MODULE_TEXT = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)

NOT_CALLABLE = 3

def fails():
    raise RuntimeError("no GPU here")

def not_a_module():
    return 42

def sized(width, in_chans=3, bias=True):
    return nn.Conv2d(in_chans, width, 3, bias=bias)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A uniquely named module in the current folder (tmp_path); sys.path and sys.modules restored after."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE_TEXT))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield name
    sys.modules.pop(name, None)


def _import(name: str):
    """Import the user module by file, without putting its folder on sys.path."""
    spec = importlib.util.spec_from_file_location(name, f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_factory_from_current_folder(user_module) -> None:
    loaded = load_model(f"{user_module}:build")
    assert loaded.kind == "factory"
    assert loaded.example_inputs is None and loaded.exported is None
    assert isinstance(loaded.model, nn.Sequential)
    loaded = load_model(f"{user_module}:Net")  # a class is a callable too
    assert type(loaded.model).__name__ == "Net"


@pytest.mark.parametrize("form", ["pt", "safetensors", "checkpoint", "data-parallel"])
def test_factory_with_weights(user_module, tmp_path, form: str) -> None:
    trained = _import(user_module).build()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # differs from what build() makes
    state = trained.state_dict()
    path = tmp_path / f"w.{'safetensors' if form == 'safetensors' else 'pt'}"
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    elif form == "pt":
        torch.save(state, path)
    elif form == "checkpoint":
        torch.save({"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    else:
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_model(f"{user_module}:build", path)
    for key, value in state.items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_pt2_keeps_example_inputs(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    x = torch.randn(2, 3, 9, 9)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    loaded = load_model(str(tmp_path / "m.pt2"))
    assert loaded.kind == "pt2" and loaded.exported is not None
    assert loaded.example_inputs is not None and len(loaded.example_inputs) == 1
    assert torch.equal(loaded.example_inputs[0], x)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)


def test_whole_model_pickle_warns_once(user_module, tmp_path) -> None:
    model = _import(user_module).Net()  # a class from the user's module in the current folder
    torch.save(model, tmp_path / "whole.pt")
    del sys.modules[user_module]  # unpickling must import it again, from the current folder
    warnings: list[str] = []
    loaded = load_model(str(tmp_path / "whole.pt"), on_warning=warnings.append)
    assert loaded.kind == "pickle"
    assert len(warnings) == 1 and "runs code from the file" in warnings[0]
    assert type(loaded.model).__module__ == user_module
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("NOT_CALLABLE", "is not callable"),
        ("fails", r"failed when called with no arguments \(RuntimeError: no GPU here\)"),
        ("not_a_module", "returned a int, not a torch.nn.Module"),
        ("missing", "cannot import factory .*check the spelling"),
        ("", "is not valid: use package.module:callable"),
    ],
)
def test_factory_errors(user_module, attr: str, message: str) -> None:
    with pytest.raises(ConvertError, match=message):
        load_model(f"{user_module}:{attr}")


def test_factory_module_that_fails_to_import(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def build(:\n")
    with pytest.raises(ConvertError, match=f"importing '{name}' for factory .* failed \\(SyntaxError"):
        load_model(f"{name}:build")


def test_weights_errors(user_module, tmp_path) -> None:
    torch.save({"a": 1, "b": "text"}, tmp_path / "notensors.pt")
    with pytest.raises(ConvertError, match="does not hold a state dict of tensors"):
        load_model(f"{user_module}:build", tmp_path / "notensors.pt")
    torch.save(nn.Conv2d(3, 4, 3), tmp_path / "module.pt")  # a pickled module is not loaded with weights_only
    with pytest.raises(ConvertError, match="cannot read weights from .*save\\(model.state_dict\\(\\)\\)"):
        load_model(f"{user_module}:build", tmp_path / "module.pt")
    with pytest.raises(ConvertError, match="no such file"):
        load_model(f"{user_module}:build", tmp_path / "absent.pt")
    torch.save({"0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "partial.pt")
    with pytest.raises(ConvertError, match=r"does not fit the model \(missing 3 keys"):
        load_model(f"{user_module}:build", tmp_path / "partial.pt")
    torch.save(nn.Conv2d(3, 4, 3).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ConvertError, match="`weights` goes with a factory spec"):
        load_model(str(tmp_path / "model.pt"), tmp_path / "model.pt")


# --- factory arguments and short names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("num_classes=10", ("num_classes", 10)),
        ("drop_rate=0.1", ("drop_rate", 0.1)),
        ("bias=False", ("bias", False)),
        ("sizes=(1, 2)", ("sizes", (1, 2))),
        ("act='gelu'", ("act", "gelu")),
        ("act=relu", ("act", "relu")),  # not a literal: the text itself
        ("path=a=b", ("path", "a=b")),
    ],
)
def test_parse_model_arg(text: str, pair: tuple[str, object]) -> None:
    assert parse_model_arg(text) == pair


@pytest.mark.parametrize("text", ["10", "=3", "num-classes=10", ""])
def test_parse_model_arg_rejects(text: str) -> None:
    with pytest.raises(ConvertError, match="use NAME=VALUE, e.g. num_classes=10"):
        parse_model_arg(text)


def test_factory_arguments(user_module) -> None:
    conv = load_model(f"{user_module}:sized", model_args={"width": 5, "in_chans": 1, "bias": False}).model
    assert (conv.in_channels, conv.out_channels, conv.bias) == (1, 5, None)
    with pytest.raises(ConvertError, match=r"failed when called with \(widht=5\) \(TypeError: .*`model_args`"):
        load_model(f"{user_module}:sized", model_args={"widht": 5})
    with pytest.raises(ConvertError, match=r"failed when called with no arguments \(TypeError"):
        load_model(f"{user_module}:sized")


def test_model_args_go_with_a_factory(tmp_path) -> None:
    torch.save(nn.Conv2d(1, 1, 1), tmp_path / "m.pt")
    with pytest.raises(ConvertError, match="`model_args` goes with a factory spec"):
        load_model(str(tmp_path / "m.pt"), model_args={"num_classes": 10})


def test_short_names_build_without_pretrained_weights() -> None:
    assert resolve_spec("torchvision:resnet18") == "torchvision.models:resnet18"
    assert resolve_spec("timm:resnet18") == "timm.models:resnet18"
    assert resolve_spec("mynet:build") == "mynet:build"
    model = load_model("torchvision:resnet18", model_args={"num_classes": 10}).model
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 10
    expected = torch.nn.utils.parameters_to_vector(model.parameters()).numel()
    assert expected == sum(p.numel() for p in __import__("torchvision").models.resnet18(num_classes=10).parameters())
    pytest.importorskip("timm")
    model = load_model("timm:resnet18", model_args={"num_classes": 7, "in_chans": 1}).model
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    with pytest.raises(ConvertError, match=r"factory 'torchvision:nosuchnet' failed in torchvision\.models\.get_model"):
        load_model("torchvision:nosuchnet")
