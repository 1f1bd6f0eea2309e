"""The converted model is the user's model: class, methods, hooks and Python kept, right in eval and train mode, at
any batch size; and it loads without unpickling (plan.json + model.safetensors + apply_plan)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TOL, assert_outputs_close, forward
from safetensors.torch import load_file
from test_cli import ok
from test_cli import run as run_cli
from timm.layers import Conv2dSame, StdConv2d
from torch import fx, nn

from convert import ConvertConfig, ConvertError, FactorizedConv, Report, apply_plan, convert_model
from convert.artifacts import output_files
from convert.job import JobOptions, run_job
from convert.surgery.apply import SavedPlanner

FULL = ConvertConfig(rank="full")


def run(model: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """`model`'s output in train or eval mode (same seed, no autograd, a copy: buffers stay as they are)."""
    return forward(model.train(training), x)


def assert_both_modes(converted: nn.Module, original: nn.Module, *inputs: torch.Tensor) -> None:
    for x in inputs:
        for training in (False, True):
            assert_outputs_close(run(converted, x, training), run(original, x, training))


class NormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: its own forward reads `self.training` (fx bakes that at trace time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        x = (x - mean[:, None, None]) / (var[:, None, None] + self.eps).sqrt()
        return torch.relu(x * self.weight[:, None, None] + self.bias[:, None, None])


class Backbone(nn.Module):
    """A user's class: methods of its own, an attribute, a reshape by the input's batch size, mode-dependent code."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = NormAct(8)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Dropout(0.3), nn.Conv2d(8, 6, 3, padding=1))
        self.tag = "mine"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.norm(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        return features.reshape(x.shape[0], -1).mean(1)  # the batch size of this call, not the example's


def backbone() -> Backbone:
    torch.manual_seed(0)
    model = Backbone()  # train mode, as a factory builds it
    model(torch.randn(4, 3, 6, 6))  # running statistics that are not the defaults
    return model


def test_class_methods_and_both_modes_kept_at_every_batch_size() -> None:
    model = backbone()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    result = convert_model(model, torch.randn(2, 3, 6, 6), FULL)

    converted = result.model
    assert type(converted) is Backbone and converted.tag == "mine" and converted.training
    assert isinstance(converted.stem, FactorizedConv) and type(converted.norm) is NormAct
    assert result.report.trace == "fx"  # fx traced the forward with `self.training` baked in: the rewrite is not fx's
    assert result.report.output_rel_error <= TOL and result.report.train_output_rel_error <= TOL
    assert_both_modes(converted, model, torch.randn(2, 3, 6, 6), torch.randn(5, 3, 9, 7))
    x = torch.randn(3, 3, 6, 6)
    assert_outputs_close(converted.eval().forward_features(x), model.eval().forward_features(x))
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())


def test_rank_one_differs_in_both_modes() -> None:
    model = backbone()
    result = convert_model(model, torch.randn(2, 3, 6, 6))
    assert result.report.output_rel_error > 1e-3 and result.report.train_output_rel_error > 1e-3


class PooledHead(nn.Module):
    """BatchNorm after global pooling (DeepLabV3+'s ASPP pooling branch): one value per channel at batch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.adaptive_avg_pool2d(self.conv(x), 1))


def test_a_model_that_cannot_run_in_train_mode_at_the_example_input_converts() -> None:
    torch.manual_seed(0)
    model = PooledHead()  # train mode: at batch 1 its BatchNorm refuses to run

    result = convert_model(model, torch.randn(1, 3, 8, 8), FULL)

    assert result.report.output_rel_error <= TOL and result.report.train_output_rel_error is None
    assert any(note.startswith("train mode: not checked") for note in result.report.trace_notes)
    assert result.model.training
    assert_both_modes(result.model, model, torch.randn(4, 3, 8, 8))


def test_a_model_that_cannot_run_in_eval_mode_is_refused() -> None:
    class TrainOnly(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training:
                raise RuntimeError("call .train() first")
            return self.conv(x)

    with pytest.raises(ConvertError, match="cannot run in eval mode on inputs of shape 1x3x8x8.*call .train"):
        convert_model(TrainOnly(), torch.randn(1, 3, 8, 8))


def doubled(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output * 2


class Gated(nn.Module):
    """Shape-dependent control flow in the model's own forward (fx cannot trace it; torch.export can) around a
    submodule whose forward calls a conv as a function; a read of its conv's weight dtype; a hook of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 2, stride=2)
        self.mixer = FunctionalMixer()
        self.register_forward_hook(doubled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.patch.weight.dtype)  # as Hugging Face's ViT does with its patch embedding
        if x.shape[-1] > 1:
            x = x + 1
        return self.mixer(self.patch(x))


class FunctionalMixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


def test_functional_conv_rewritten_in_its_module_only() -> None:
    torch.manual_seed(0)
    model = Gated().eval()
    x = torch.randn(2, 3, 8, 8)

    result = convert_model(model, x, FULL)

    assert result.report.trace == "export"
    converted = result.model
    assert type(converted) is Gated and isinstance(converted.patch, FactorizedConv)
    assert isinstance(converted.mixer, fx.GraphModule)  # only the module that calls F.conv2d is a graph
    assert {row.name: row.status for row in result.report.layers} == {"patch": "converted", "mixer": "converted"}
    assert any(note.startswith("rewrite: mixer calls mixer as functions") for note in result.report.trace_notes)
    assert_both_modes(converted, model, x, torch.randn(3, 3, 6, 4))


def test_functional_conv_in_a_module_fx_cannot_trace_stays() -> None:
    class Untraceable(FunctionalMixer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if float(x.mean()) > -1e9:  # value-dependent: fx cannot trace this module
                x = x * 1.5
            return super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), Untraceable()).eval()
    x = torch.randn(2, 3, 6, 6)

    result = convert_model(model, x, FULL)

    rows = {row.name: row for row in result.report.layers}
    assert rows["0"].status == "converted"
    if "1" in rows:  # torch.export sees the call
        assert rows["1"].status == "skipped" and "fx cannot trace" in rows["1"].reason
    assert type(result.model[1]) is Untraceable
    assert_both_modes(result.model, model, x)


def test_hooks_on_a_conv_and_a_shared_conv_follow_the_replacement() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv).eval()  # one conv at two attributes
    seen = []
    conv.register_forward_hook(lambda _m, _args, out: seen.append(out.shape))
    x = torch.randn(2, 4, 5, 5)

    result = convert_model(model, x, FULL)

    assert result.model[0] is result.model[2] and isinstance(result.model[0], FactorizedConv)
    seen.clear()
    forward(result.model, x)
    assert seen == [(2, 4, 5, 5)] * 2
    assert_both_modes(result.model, model, x)


def test_timm_same_padding_converted_and_weight_standardization_left() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 6, 3, stride=2), StdConv2d(6, 6, 3, padding=1)).eval()
    x = torch.randn(2, 3, 9, 7)  # odd sizes: "same" padding differs per side

    result = convert_model(model, x, FULL)

    rows = {row.name: row for row in result.report.layers}
    assert rows["0"].status == "converted" and type(result.model[0].depthwise) is Conv2dSame
    assert rows["1"].status == "skipped" and "computes its own forward" in rows["1"].reason
    assert_both_modes(result.model, model, x, torch.randn(1, 3, 10, 12))


def test_factorized_conv_answers_for_the_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1)).eval()
    result = convert_model(model, torch.randn(1, 4, 8, 8), FULL)
    replaced, original = result.model[0], model[0]
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(replaced, name) == getattr(original, name), name
    torch.testing.assert_close(replaced.weight, original.weight, rtol=TOL, atol=TOL)
    assert torch.equal(replaced.bias, original.bias)


def gated() -> Gated:
    torch.manual_seed(0)
    return Gated().eval()


@pytest.mark.parametrize(
    ("factory", "layers", "shape"),
    [("backbone", {"stem", "body.0", "body.2"}, (2, 3, 6, 6)), ("gated", {"patch", "mixer"}, (2, 3, 8, 8))],
)
def test_plan_and_safetensors_rebuild_the_converted_model_without_unpickling(
    factory: str, layers: set[str], shape: tuple[int, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the factory's module is importable from the current folder, as for a user
    (tmp_path / "nets.py").write_text("from test_dropin import backbone, gated  # noqa: F401\n")
    options = JobOptions(model=f"nets:{factory}", input_shapes=(shape,), config=ConvertConfig(rank=2))
    run_job(options, tmp_path / "out")

    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["format"] == "convert.plan" and {layer["name"] for layer in plan["layers"]} == layers
    fresh = {"backbone": backbone, "gated": gated}[factory]()
    model = apply_plan(fresh, tmp_path / "out" / "plan.json")
    model.load_state_dict(load_file(tmp_path / "out" / "model.safetensors"))
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=False)
    assert model is fresh and type(model) is type(saved)
    for x in (torch.randn(*shape), torch.randn(3, *shape[1:])):
        for training in (False, True):
            torch.testing.assert_close(run(model, x, training), run(saved, x, training), rtol=0, atol=0)


def test_a_plan_of_another_model_is_refused() -> None:
    result = convert_model(backbone(), torch.randn(2, 3, 6, 6))
    other = nn.Sequential(nn.Conv2d(3, 8, 5))
    with pytest.raises(ConvertError, match="plan does not fit the model: it has no module 'stem'"):
        apply_plan(other, result.plan())
    with pytest.raises(ConvertError, match="not a conversion plan"):
        apply_plan(other, {"layers": []})


def test_a_saved_plan_applies_to_retrained_weights() -> None:
    first = convert_model(backbone(), torch.randn(2, 3, 6, 6), ConvertConfig(rank=2))
    retrained = backbone()
    with torch.no_grad():
        for parameter in retrained.parameters():
            parameter.add_(0.1)

    again = convert_model(retrained, torch.randn(2, 3, 6, 6), planner=SavedPlanner(first.plan()))

    assert again.plan()["layers"] == first.plan()["layers"]
    assert not torch.equal(again.model.stem.depthwise.weight, first.model.stem.depthwise.weight)
    with pytest.raises(ConvertError, match="the plan does not fit the model: its layer stem"):
        convert_model(nn.Sequential(nn.Conv2d(3, 8, 5)), torch.randn(1, 3, 8, 8), planner=SavedPlanner(first.plan()))


class WeightNormed(nn.Module):
    """wav2vec2's positional conv in miniature: a grouped (so left as it is) weight-normed conv, a parametrization,
    which pickle refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1, groups=2))
        self.head = nn.Conv1d(4, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


def weight_normed() -> WeightNormed:
    torch.manual_seed(0)
    return WeightNormed()


def test_a_model_that_does_not_pickle_is_written_without_model_pt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save refuses it (as it refuses the user's model): OUTDIR has the rest, the report and the message say
    why and how to load it, and `convert bench` on the folder says what to do instead of failing on model.pt."""
    (tmp_path / "nets.py").write_text("from test_dropin import weight_normed  # noqa: F401\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    result = ok(run_cli(tmp_path, "nets:weight_normed", "--rank", "full", "--input-shape", "2,4,16", "-o", "out"))

    out = tmp_path / "out"
    report = Report.from_dict(json.loads((out / "report.json").read_text()))
    assert report.model_pt_skipped.startswith("RuntimeError: Serialization of parametrized modules")
    assert "model.pt not written" in result.stderr and "convert.apply_plan" in result.stderr
    assert "model.pt not written" in (out / "report.md").read_text()
    assert "model.pt" not in output_files(report)
    assert sorted(p.name for p in out.iterdir()) == sorted(output_files(report))
    rebuilt = apply_plan(weight_normed(), out / "plan.json")
    rebuilt.load_state_dict(load_file(out / "model.safetensors"))
    assert_both_modes(rebuilt, weight_normed(), torch.randn(3, 4, 16))

    refused = run_cli(tmp_path, "bench", "out", "--runtime", "torch")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "out has no model.pt: the model does not pickle" in refused.stderr
