"""Distillation: losses, schedule, feature sites, determinism, resume, and the NaN and Ctrl-C stops.

Tiny models built here, a few steps each; references are the teacher itself (a full-rank conversion is exact,
so its first loss is zero at every feature site) and uninterrupted runs (a resumed or stopped run must give
the same weights as one that ran straight through to the same step).
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.utils.data import Dataset, Subset

from convert import (
    ConvertConfig,
    ConvertError,
    DistillConfig,
    DistillData,
    DistillEvent,
    convert_model,
    distill_result,
    load_data,
    save_result,
)
from convert.distill.losses import output_loss_kinds
from convert.distill.state import CHECKPOINT_VERSION, RunState, load_checkpoint
from convert.distill.trainer import learning_rate
from convert.surgery.trace import plain_graph_module

X = torch.zeros(1, 3, 10, 10)
FAST = DistillConfig(steps=6, batch_size=8, eval_every=2)


class Net(nn.Module):
    """Convs as modules (one called twice), a functional conv on its own weight, BatchNorm, a class head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.2)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.shared(x))
        x = torch.relu(self.shared(x))  # the same conv at a second site
        x = torch.relu(F.conv2d(x, self.weight, padding=1))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def converted(teacher: nn.Module):
    return convert_model(teacher, X, ConvertConfig(target="separable", rank=1))


@pytest.fixture(scope="module")
def data():
    return load_data(torch.randn(64, 3, 10, 10), X, seed=0)


def states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt_after(step: int):
    def progress(event: DistillEvent) -> None:
        if event.kind == "step" and event.step == step:
            raise KeyboardInterrupt

    return progress


# --- losses and schedule -------------------------------------------------------------------------------------------


def test_output_loss_choice() -> None:
    logits, image = torch.zeros(4, 10), torch.zeros(4, 3, 8, 8)
    assert output_loss_kinds(logits, "auto") == ["kl"]
    assert output_loss_kinds(torch.zeros(4, 1), "auto") == ["mse"]  # one score is a regression
    assert output_loss_kinds((logits, image, torch.zeros(4, dtype=torch.int64)), "auto") == ["kl", "mse"]
    assert output_loss_kinds({"a": image}, "kl") == ["kl"]  # per-pixel class scores, on request
    assert output_loss_kinds(logits, "mse") == ["mse"]
    with pytest.raises(ConvertError, match="loss kl needs class scores in dim 1"):
        output_loss_kinds(torch.zeros(4), "kl")
    with pytest.raises(ConvertError, match="no floating point tensor"):
        output_loss_kinds(torch.zeros(4, 3, dtype=torch.int64), "auto")


def test_learning_rate_warmup_then_cosine() -> None:
    rates = [learning_rate(step, 100, 1.0, 10) for step in range(100)]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert rates[55] == pytest.approx(0.5) and rates[-1] < 1e-3
    assert learning_rate(0, 5, 2.0, 0) == pytest.approx(2.0)


def test_config_checks() -> None:
    with pytest.raises(ConvertError, match="either steps or epochs"):
        DistillConfig(steps=3, epochs=1)
    with pytest.raises(ConvertError, match="lr 0 is not valid"):
        DistillConfig(lr=0)
    with pytest.raises(ConvertError, match="batchnorm 'thaw' is not valid: use one of update, freeze"):
        DistillConfig(batchnorm="thaw")
    with pytest.raises(ConvertError, match="warmup 1.5"):
        DistillConfig(warmup=1.5)


# --- what is trained against what ---------------------------------------------------------------------------------


def test_feature_sites_at_every_converted_layer(teacher: nn.Module, data) -> None:
    """A full-rank conversion computes what the teacher does, so if every converted layer is paired with the
    teacher's conv at the same site, the first loss is zero; a mismatched pair would not be. (BatchNorm frozen:
    in "update" mode the student normalises with batch statistics, the teacher with its running ones.)"""
    exact = convert_model(teacher, X, ConvertConfig(target="separable", rank="full"))
    converted = [row.name for row in exact.report.layers if row.status == "converted"]
    assert converted == ["stem", "shared", "weight"]  # "weight": the functional conv, by its weight's name
    result = distill_result(exact, teacher, data, dataclasses.replace(FAST, steps=1, batchnorm="freeze"))
    distill = result.report.distill
    assert distill.feature_layers == converted and distill.unmatched_layers == []
    assert distill.loss_start < 1e-5  # float32 noise; a mismatched pair gives a relative error of order 1
    assert distill.before.output_rel_error < 1e-5 and distill.before.top1_agreement == 1.0


def test_feature_sites_in_an_exported_teacher(teacher: nn.Module, data) -> None:
    """A .pt2 teacher is an aten-level graph without conv modules: its conv calls are made modules to hook."""
    exported = torch.export.export(teacher, (X,))
    graph_teacher = plain_graph_module(exported)
    exact = convert_model(graph_teacher, X, ConvertConfig(rank="full"), exported=exported)
    result = distill_result(exact, graph_teacher, data, dataclasses.replace(FAST, steps=1, batchnorm="freeze"))
    distill = result.report.distill
    assert distill.feature_layers == ["stem", "shared", "weight"] and distill.unmatched_layers == []
    assert distill.loss_start < 1e-5


def test_distillation_brings_the_student_closer(teacher: nn.Module, converted, data) -> None:
    teacher_before, converted_before = snapshot(teacher), snapshot(converted.model)
    result = distill_result(converted, teacher, data, dataclasses.replace(FAST, steps=40, eval_every=10))
    distill = result.report.distill
    assert distill.status == "completed" and distill.steps == 40
    assert distill.after.output_rel_error < 0.7 * distill.before.output_rel_error
    assert distill.loss_end < distill.loss_start
    assert distill.output_loss == ["kl"] and distill.after.top1_agreement is not None
    assert [point[0] for point in distill.val_curve] == [0, 10, 20, 30, 40]
    # the weights kept are those of the best validation, and they are what the result holds
    best = min(distill.val_curve, key=lambda point: point[1])
    assert distill.best_step == best[0] and distill.after.loss == best[1]
    # neither input is changed; the result keeps the converted model's mode and device
    assert_unchanged(teacher, teacher_before)
    assert_unchanged(converted.model, converted_before)
    assert result.model.training == converted.model.training
    assert result.report.layers is converted.report.layers and converted.report.distill is None


def test_batchnorm_frozen_or_updated(teacher: nn.Module, converted, data) -> None:
    running = converted.model.bn.running_mean
    frozen = distill_result(converted, teacher, data, dataclasses.replace(FAST, batchnorm="freeze"))
    updated = distill_result(converted, teacher, data, dataclasses.replace(FAST, batchnorm="update"))
    assert torch.equal(frozen.model.bn.running_mean, running)
    assert not torch.equal(updated.model.bn.running_mean, running)
    assert not torch.equal(frozen.model.bn.weight, converted.model.bn.weight)  # scale and shift still train


def test_regression_output_uses_relative_mse(data) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 2, 3, padding=1)).eval()
    result = distill_result(convert_model(model, X), model, data, FAST)
    assert result.report.distill.output_loss == ["mse"] and result.report.distill.after.top1_agreement is None


def test_two_input_model_and_synthetic_data() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = nn.Conv2d(3, 4, 3, padding=1)
            self.signal = nn.Conv1d(2, 4, 3, padding=1)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.image(x).mean(dim=(2, 3)) + self.signal(y).mean(dim=2)

    model = TwoInputs().eval()
    examples = (torch.zeros(1, 3, 6, 6), torch.zeros(1, 2, 9))
    data = load_data("synthetic", examples)
    result = distill_result(convert_model(model, examples), model, data, FAST)
    distill = result.report.distill
    assert distill.feature_layers == ["image", "signal"] and distill.synthetic and distill.epochs is None
    assert any("accuracy on real data is unknown" in note for note in distill.notes)


# --- determinism, resume, stops -----------------------------------------------------------------------------------


def test_same_seed_same_weights(teacher: nn.Module, converted, data) -> None:
    a, b = (distill_result(converted, teacher, data, FAST) for _ in range(2))
    c = distill_result(converted, teacher, data, dataclasses.replace(FAST, seed=1))
    assert states_equal(a.model.state_dict(), b.model.state_dict())
    assert not states_equal(a.model.state_dict(), c.model.state_dict())
    assert a.report.distill.curve == b.report.distill.curve


def test_resume_gives_the_weights_of_a_straight_run(teacher: nn.Module, converted, data, tmp_path: Path) -> None:
    straight = distill_result(converted, teacher, data, FAST)
    first = distill_result(converted, teacher, data, FAST, progress=interrupt_after(3))
    assert first.report.distill.status == "interrupted" and first.checkpoint["step"] == 3
    save_result(first, tmp_path / "out")  # through the file, as --resume reads it
    resumed = distill_result(converted, teacher, data, FAST, checkpoint=tmp_path / "out" / "distill-checkpoint.pt")
    distill = resumed.report.distill
    assert distill.resumed_from == 3 and distill.steps == 6 and distill.status == "completed"
    assert states_equal(resumed.checkpoint["student"], straight.checkpoint["student"])
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    assert distill.curve == straight.report.distill.curve and distill.val_curve == straight.report.distill.val_curve

    # the checkpoint is the RunState: its keys are the fields, in order, after the format's version
    assert list(first.checkpoint) == ["version", *(field.name for field in dataclasses.fields(RunState))]
    assert first.checkpoint["version"] == CHECKPOINT_VERSION and first.checkpoint["total_steps"] == FAST.steps

    other = convert_model(teacher, X, ConvertConfig(target="separable", rank=2))
    with pytest.raises(ConvertError, match="checkpoint does not fit this conversion"):
        distill_result(other, teacher, data, FAST, checkpoint=first.checkpoint)
    with pytest.raises(ConvertError, match="no distillation checkpoint at .*run without `resume`"):
        load_checkpoint(tmp_path / "absent.pt")


def test_interrupt_keeps_the_best_weights(teacher: nn.Module, converted, data) -> None:
    events: list[DistillEvent] = []

    def progress(event: DistillEvent) -> None:
        events.append(event)
        interrupt_after(5)(event)

    result = distill_result(converted, teacher, data, dataclasses.replace(FAST, steps=20), progress=progress)
    distill = result.report.distill
    assert distill.status == "interrupted" and distill.steps == 5 and "--resume continues" in distill.message
    assert [e.kind for e in events][:3] == ["start", "eval", "step"] and events[-1].kind == "end"
    best = min(distill.val_curve, key=lambda point: point[1])
    assert distill.best_step == best[0] <= 5
    kept = distill_result(
        converted, teacher, data, dataclasses.replace(FAST, steps=20), progress=interrupt_after(best[0])
    )
    assert best[0] == 0 or states_equal(result.model.state_dict(), kept.checkpoint["student"])


def test_ctrl_c_stops_at_the_end_of_the_step(teacher: nn.Module, converted, data) -> None:
    def progress(event: DistillEvent) -> None:
        if event.kind == "step" and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    handler = signal.getsignal(signal.SIGINT)
    result = distill_result(converted, teacher, data, FAST, progress=progress)
    assert result.report.distill.status == "interrupted" and result.checkpoint["step"] == 2
    assert signal.getsignal(signal.SIGINT) is handler  # put back


class _NaNAfter(Dataset):
    """Synthetic-like inputs (index = position in the stream) that turn NaN from `start` on."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> tuple[torch.Tensor]:
        x = torch.randn(3, 10, 10, generator=torch.Generator().manual_seed(index))
        return (x * math.nan if index >= self.start else x,)


def test_nan_loss_stops_and_keeps_the_last_good_weights(teacher: nn.Module, converted, data) -> None:
    stream = _NaNAfter(5 * FAST.batch_size)  # step 5 (0-based) sees NaN first
    bad = DistillData(stream, Subset(_NaNAfter(1 << 29), range(16)), None, "test", "test", True)
    result = distill_result(converted, teacher, bad, dataclasses.replace(FAST, steps=10))
    distill = result.report.distill
    assert distill.status == "nan" and "the loss became nan at step 6" in distill.message
    assert "lower --lr" in distill.message
    # the weights whose loss was last finite: those of step 4 (before its update), as a run stopped there has
    assert distill.steps == 4 and result.checkpoint["optimizer"] is None and len(result.checkpoint["history"]) == 4
    reference = distill_result(
        converted, teacher, bad, dataclasses.replace(FAST, steps=10), progress=interrupt_after(4)
    )
    weights = dict(result.model.named_parameters())
    assert all(torch.equal(weights[name], reference.checkpoint["student"][name]) for name in weights)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())


def test_options_that_cannot_run(teacher: nn.Module, converted, data) -> None:
    with pytest.raises(ConvertError, match="`amp`=bf16 runs on CUDA only: use `amp`=off"):
        distill_result(converted, teacher, data, DistillConfig(device="cpu", amp="bf16"))
    with pytest.raises(ConvertError, match="synthetic inputs have no epochs"):
        distill_result(converted, teacher, load_data("synthetic", X), DistillConfig(epochs=1))
    if not torch.cuda.is_available():
        for device in ("cuda", "tensorrt"):  # tensorrt is ONNX Runtime's: training takes its GPU through CUDA
            with pytest.raises(ConvertError, match=f"`device`={device} cannot run here"):
                distill_result(converted, teacher, data, DistillConfig(device=device))


def test_epochs_set_the_steps(teacher: nn.Module, converted, data) -> None:
    result = distill_result(converted, teacher, data, DistillConfig(epochs=0.5, batch_size=8))
    distill = result.report.distill
    assert distill.total_steps == math.ceil(0.5 * data.train_size / 8) and distill.epochs >= 0.5


@pytest.mark.cuda
def test_cuda_with_autocast(teacher: nn.Module, converted, data) -> None:
    result = distill_result(converted, teacher, data, dataclasses.replace(FAST, device="cuda"))
    distill = result.report.distill
    assert distill.device.startswith("cuda") and distill.amp in ("bfloat16", "float16")
    assert next(result.model.parameters()).device.type == "cpu"  # handed back where it came from
    assert distill.after.output_rel_error < distill.before.output_rel_error
