"""`convert ... --distill DATA`, run for real in a subprocess (cwd = tmp_path): outputs, resume, Ctrl-C, bad
inputs, and torchrun with two gloo processes against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import COMMAND, assert_refused, assert_refused_in_process, load_output, ok, run, tiny_module

from convert import load_data

MODEL = textwrap.dedent(
    """
    from torch import nn


    def classifier():
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
        )
    """
)
SHAPE = ["--input-shape", "1,3,12,12"]
FEW = ["--steps", "6", "--batch-size", "8"]


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tiny.py").write_text(MODEL)
    # weights are random per process: a fixed seed for the factory, so that runs convert the same model
    (tmp_path / "sitecustomize.py").write_text("import torch\ntorch.manual_seed(0)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH")))))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny convs: spinning threads cost 10-50x on a shared CPU
    monkeypatch.delitem(sys.modules, "tiny", raising=False)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((48, 3, 12, 12), dtype=np.float32))
    yield tmp_path
    sys.modules.pop("tiny", None)


def test_distill_writes_report_curve_and_checkpoint_then_resumes(work: Path) -> None:
    result = ok(run(work, "tiny:classifier", *SHAPE, "--distill", "x.npy", *FEW, "-o", "out"))
    assert "distilled 6/6 steps" in result.stderr and "top-1 agreement" in result.stderr
    assert (
        "wrote out/ (model.pt, model.safetensors, plan.json, report.json, report.md, "
        "distill.png, distill-checkpoint.pt)"
    ) in result.stderr
    out = work / "out"
    report = json.loads((out / "report.json").read_text())
    distill = report["distill"]
    assert distill["status"] == "completed" and distill["steps"] == 6 and distill["batch_size"] == 8
    assert distill["data"] == "48 inputs from x.npy, 43 for training" and distill["val_data"].startswith("5 held out")
    assert distill["feature_layers"] == ["0", "3"] and distill["output_loss"] == ["kl"]
    assert {"output_rel_error", "top1_agreement", "loss"} == distill["before"].keys() == distill["after"].keys()
    assert distill["steps_per_second"] > 0 and distill["seconds"] > 0 and distill["loss_start"] > 0
    assert "## Distillation" in (out / "report.md").read_text()
    assert (out / "distill.png").read_bytes().startswith(b"\x89PNG")
    # the written model is the distilled one: its error against the original on the held-out inputs is the
    # report's "after" (the factory's model, rebuilt from the same seed; the split, from the same seed)
    torch.manual_seed(0)
    teacher, student = tiny_module(work).classifier().eval(), load_output(out / "model.pt").eval()
    val = torch.stack([sample[0] for sample in load_data(str(out.parent / "x.npy"), torch.zeros(1, 3, 12, 12)).val])
    with torch.no_grad():
        error = float((student(val) - teacher(val)).norm() / teacher(val).norm())
    assert error == pytest.approx(distill["after"]["output_rel_error"], rel=1e-4)
    assert error < distill["before"]["output_rel_error"]
    resumed = ok(
        run(
            work,
            "tiny:classifier",
            *SHAPE,
            "--distill",
            "x.npy",
            "--steps",
            "9",
            "--batch-size",
            "8",
            "--resume",
            "-o",
            "out",
            "--json",
        )
    )
    distill = json.loads(resumed.stdout)["distill"]
    assert distill["resumed_from"] == 6 and distill["steps"] == 9 and len(distill["curve"]) == 9


def test_ctrl_c_writes_the_best_weights_and_exits_130(work: Path) -> None:
    args = ["tiny:classifier", *SHAPE, "--distill", "synthetic", "--steps", "1000000", "--batch-size", "4", "-o", "out"]
    process = subprocess.Popen([*COMMAND, *args], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # a line per validation on a non-terminal; the first is step 0
            if line.startswith("step 0/"):
                break
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["distill"]["status"] == "interrupted"
    assert "interrupted at step" in stderr and "--resume continues" in stderr and "Traceback" not in stderr


def _images(root: Path, mode: str) -> None:
    (root / "imgs" / "a").mkdir(parents=True)
    for index in range(3):
        Image.new(mode, (14, 14)).save(root / "imgs" / "a" / f"{index}.png")


# the bad inputs, end to end: the real command in a subprocess
BAD_DATA = [
    ("empty-folder", lambda root: (root / "imgs").mkdir(), ["--distill", "imgs"], r"imgs holds no images"),
    (
        "gray-images",
        lambda root: _images(root, "L"),
        ["--distill", "imgs"],
        r"has 1 channel\(s\) \(mode L\), the model takes 3",
    ),
    (
        "wrong-shape",
        lambda root: np.save(root / "y.npy", np.zeros((4, 3, 8, 8), np.float32)),
        ["--distill", "y.npy"],
        r"y\.npy is shaped 4x3x8x8, the model takes inputs shaped N x 3x12x12",
    ),
    (
        "wrong-dtype",
        lambda root: torch.save(torch.zeros(4, 3, 12, 12, dtype=torch.int64), root / "y.pt"),
        ["--distill", "y.pt"],
        r"holds int64 values, the model takes float32 inputs",
    ),
    (
        "not-a-tensor",
        lambda root: (root / "y.pt").write_bytes(os.urandom(256)),
        ["--distill", "y.pt"],
        r"cannot read inputs from y\.pt",
    ),
]


@pytest.mark.parametrize(("setup", "args", "expected"), [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA])
def test_bad_data(work: Path, setup, args: list[str], expected: str) -> None:
    setup(work)
    assert_refused(work, ["tiny:classifier", *SHAPE, *args, "-o", "out"], expected)


# options that cannot run, in-process (the same contract, without a process start each)
BAD_OPTIONS = [
    ("two-files-one-input", ["--distill", "x.npy", "--distill", "x.npy"], r"holds 2 input tensor\(s\), the model"),
    ("option-without-distill", ["--steps", "5"], r"--steps goes with --distill DATA"),
    ("resume-without-checkpoint", ["--distill", "x.npy", "--resume"], r"no distillation checkpoint at out/"),
    ("amp-on-cpu", ["--distill", "x.npy", "--amp", "bf16", "--device", "cpu"], r"--amp bf16 runs on CUDA only"),
    ("epochs-of-synthetic", ["--distill", "synthetic", "--epochs", "2"], r"synthetic inputs have no epochs"),
    ("zero-steps", ["--distill", "x.npy", "--steps", "0"], r"steps 0 is not valid"),
    ("image-mean-count", ["--distill", "x.npy", "--image-mean", "0.5"], r"image mean has 1 values"),
    ("negative-batch", ["--distill", "x.npy", "--steps", "1", "--batch-size", "-1"], r"batch_size -1 is not valid"),
    # refused on the client, before any connection: images stay local
    (
        "images-to-a-server",
        ["--distill", ".", "--server", "127.0.0.1:9"],
        r"--distill \. is a folder of images, which the server does not take: convert it to a tensor file .*\.npy",
    ),
    (
        "synthetic-val-to-a-server",
        ["--distill", "x.npy", "--val", "synthetic", "--server", "127.0.0.1:9"],
        r"--val synthetic is not available with --server: give a tensor file, or leave --val out",
    ),
]
if not torch.cuda.is_available():
    BAD_OPTIONS.append(("cuda-here", ["--distill", "x.npy", "--device", "cuda"], r"--device cuda cannot run here"))


@pytest.mark.parametrize(("args", "expected"), [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    assert_refused_in_process(work, monkeypatch, capsys, ["tiny:classifier", *SHAPE, *args, "-o", "out"], expected)


@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(work: Path) -> None:
    """DDP: each of 2 processes takes half of every batch and the gradients are averaged, which is the full
    batch's gradient: the weights match a single process (BatchNorm frozen: its batch statistics are per
    process). Only rank 0 writes."""
    args = ["tiny:classifier", *SHAPE, "--distill", "x.npy", *FEW, "--batchnorm", "freeze", "--json"]
    single = ok(run(work, *args, "-o", "one"))
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ddp = subprocess.run(
        [*launch, "-m", "convert.cli", *args, "-o", "two"], cwd=work, capture_output=True, text=True, timeout=300
    )
    assert ddp.returncode == 0, ddp.stderr
    report = json.loads(ddp.stdout)  # one report: rank 1 prints nothing
    assert report["distill"]["world_size"] == 2 and json.loads(single.stdout)["distill"]["world_size"] == 1
    one, two = load_output(work / "one" / "model.pt").state_dict(), load_output(work / "two" / "model.pt").state_dict()
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    distill = report["distill"]
    assert distill["after"] == pytest.approx(json.loads(single.stdout)["distill"]["after"], rel=1e-3)
    assert distill["after"]["output_rel_error"] < distill["before"]["output_rel_error"]  # it did train
