"""Calibrated conversion: exact at full rank in every conv form, better than the weight SVD below it, bad input.

The calibrated factors are fitted to real inputs layer by layer (convert/surgery/calibrate.py, fit.py); at full rank
the fit must still reproduce the original model, whatever the inputs (every conv form, functional and shared convs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import test_cli_distill
import torch
from conftest import assert_same_function, converted_rows
from PIL import Image
from test_cli import assert_refused_in_process, tiny_module
from test_cli_distill import SHAPE
from test_exactness import (
    CONV_CASES,
    SHAPES,
    TARGETS,
    CustomNet,
    Func1d3dNet,
    FuncNet,
    PathNet,
    SharedFuncNet,
    SharedNet,
    TransposedNet,
)
from torch import nn

import convert.surgery.calibrate as calibrate_module
from convert import ConvertConfig, ConvertError, cli, convert_model
from convert.surgery.calibrate import CalibrationConfig

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

work = test_cli_distill.work  # the fixture: a folder with the tiny model and x.npy (48 inputs)
CAL_TOL = 1e-4  # full rank through a least-squares refit in float64, returned in float32


def calibration_for(shapes: list[tuple[int, ...]], samples: int = 12) -> CalibrationConfig:
    torch.manual_seed(1)
    data = [torch.randn(samples, *shape[1:]) for shape in shapes]
    return CalibrationConfig(data if len(data) > 1 else data[0], batch_size=5)


# one case of each form (dims, stride, padding modes, same, dilation, grouped already, transposed, wide and narrow)
CASES = [
    "1d-stride2-pad2-dil2",
    "1d-reflect-same-k2",
    "2d-stride2-k5-pad2",
    "2d-same-k4",
    "2d-circular-stride2",
    "2d-wide-out",
    "2d-narrow-out",
    "3d-same-k(2,3,2)-replicate",
    "2d-groups2-same-k(2,3)-circular",
    "3d-groups2-valid",
    "1d-T-dil2-groups2-nobias",
    "2d-T-stride(2,3)-k(3,4)-outpad(1,2)",
    "3d-T-k(2,1,3)-groups2",
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", CASES)
def test_calibrated_exact_at_full_rank(case: str, target: str) -> None:
    torch.manual_seed(0)
    conv = CONV_CASES[case]()
    model = PathNet(
        "fx", conv, nn.ReLU(), type(conv)(conv.out_channels, 5, 1) if not conv.transposed else nn.Identity()
    )
    x = torch.randn(*SHAPES[len(conv.kernel_size)])
    result = convert_model(model, x, TARGETS[target], calibration=calibration_for([x.shape]))
    assert converted_rows(result.report)
    assert result.report.calibration is not None and result.report.calibration.calibrated >= 1
    assert_same_function(result.model, model, [x], CAL_TOL)


@pytest.mark.parametrize(
    "make, shapes",
    [
        (lambda: FuncNet("fx"), [(2, 4, 9, 10)]),
        (lambda: Func1d3dNet("fx"), [(2, 4, 11), (2, 4, 6, 7, 6)]),
        (lambda: SharedNet("fx"), [(2, 4, 7, 7)]),
        (lambda: SharedFuncNet("fx"), [(2, 4, 7, 7)]),
        (lambda: TransposedNet("fx"), [(2, 4, 5, 5)]),
        (lambda: CustomNet("fx"), [(2, 3, 12, 12)]),
        (lambda: CustomNet("module-walk"), [(2, 3, 12, 12)]),
    ],
    ids=["functional", "functional-1d-3d", "shared", "shared-functional", "transposed", "custom", "module-walk"],
)
@pytest.mark.parametrize("target", TARGETS)
def test_calibrated_models_exact_at_full_rank(make, shapes, target: str) -> None:
    torch.manual_seed(0)
    model = make().eval()
    inputs = [torch.randn(*shape) for shape in shapes]
    result = convert_model(model, inputs, TARGETS[target], calibration=calibration_for(shapes))
    assert result.report.calibration.calibrated == len(converted_rows(result.report)) >= 1
    assert_same_function(result.model, model, inputs, CAL_TOL)


class CorrelatedNet(nn.Module):
    """Convs on correlated inputs (a low-dimensional signal spread over channels), where the weight SVD alone is
    far from the best rank-1 fit."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(6, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def correlated(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(6, 2, generator=torch.Generator().manual_seed(7))
    signal = torch.randn(n, 2, 8, 8, generator=generator)
    return torch.einsum("cs,nshw->nchw", mix, signal) + 0.05 * torch.randn(n, 6, 8, 8, generator=generator)


def test_calibration_beats_weight_svd_below_full_rank() -> None:
    torch.manual_seed(0)
    model = CorrelatedNet().eval()
    x, held_out = correlated(2, 0), correlated(64, 1)
    config = ConvertConfig(rank=1)
    svd = convert_model(model, x, config)
    calibrated = convert_model(model, x, config, calibration=CalibrationConfig(correlated(64, 2), batch_size=16))
    report = calibrated.report.calibration
    assert report.calibrated == 2 and report.output_rel_error < 0.75 * report.svd_output_rel_error
    rows = converted_rows(calibrated.report)
    assert all(row.calibration_error_after < row.calibration_error_before for row in rows)
    with torch.no_grad():
        reference = model(held_out)
        errors = [float((m(held_out) - reference).norm() / reference.norm()) for m in (svd.model, calibrated.model)]
    assert errors[1] < 0.75 * errors[0]  # on inputs it was not fitted to
    assert "## Calibration" in calibrated.report.to_markdown()


def test_too_few_samples_keep_the_svd_factors_with_the_reason() -> None:
    model = CorrelatedNet().eval()
    x = correlated(1, 0)[:, :, :2, :2]  # 4 positions for 54 unknowns per 1x1 column
    result = convert_model(model, x, ConvertConfig(rank=1), calibration=CalibrationConfig(x))
    assert result.report.calibration.calibrated == 0 and result.report.calibration.kept == 2
    assert all("give more `samples`" in row.reason for row in converted_rows(result.report))


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.randn(4, 5, 8, 8), "shape"),
        (torch.full((4, 6, 8, 8), float("nan")), "NaN"),
    ],
    ids=["shape", "nan"],
)
def test_bad_calibration_inputs_fail_before_any_work(data: torch.Tensor, message: str) -> None:
    with pytest.raises(ConvertError, match=message) as caught:
        convert_model(CorrelatedNet(), correlated(2, 0), ConvertConfig(rank=1), calibration=data)
    assert "\n" not in str(caught.value)


def test_bad_calibration_options() -> None:
    with pytest.raises(ConvertError, match="`samples`=0"):
        CalibrationConfig(torch.randn(4, 6, 8, 8), samples=0)


# --- the command line: --calibrate [DATA], --calibration-samples N -----------------------------------------------


def test_cli_calibrates_on_a_tensor_file_and_reports_it(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    args = ["tiny:classifier", *SHAPE, "--rank", "1", "--calibrate", "x.npy", "--calibration-samples", "40"]
    assert cli.main([*args, "-o", "out"]) == 0, capsys.readouterr().err
    assert "calibrated 2 layers on 40 of" in capsys.readouterr().err
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["calibration"]["samples"] == 40 and report["calibration"]["calibrated"] == 2
    assert report["calibration"]["output_rel_error"] < report["calibration"]["svd_output_rel_error"]
    assert all(row["calibration_error_after"] is not None for row in report["layers"] if row["status"] == "converted")
    assert "## Calibration" in (work / "out" / "report.md").read_text()


def test_cli_calibrate_without_data_reads_the_distillation_data(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    args = ["tiny:classifier", *SHAPE, "--rank", "1", "--distill", "x.npy", "--steps", "1", "--calibrate"]
    assert cli.main([*args, "-o", "out"]) == 0, capsys.readouterr().err
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["calibration"]["samples"] == 48 and report["distill"] is not None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--calibration-samples", "8"], r"--calibration-samples goes with --calibrate DATA"),
        (["--calibrate"], r"--calibrate needs its data: give the inputs, or --distill data to calibrate on"),
        (["--calibrate", "x.npy", "--calibration-samples", "0"], r"--calibration-samples 0 is not valid"),
        (["--calibrate", "nope.npy"], r"nope\.npy"),
    ],
    ids=["samples-alone", "no-data", "zero-samples", "missing-file"],
)
def test_cli_bad_calibration_options(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    assert_refused_in_process(work, monkeypatch, capsys, ["tiny:classifier", *SHAPE, *args, "-o", "out"], expected)


def test_cli_calibration_on_image_folders_honours_image_mean_and_std(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    pixels = np.random.default_rng(0).integers(0, 256, (20, 12, 12, 3), dtype=np.uint8)
    (work / "images").mkdir()
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(work / "images" / f"{index:02d}.png")
    mean, std = (0.2, 0.4, 0.6), (0.5, 0.25, 0.3)
    norm = ["--image-mean", ",".join(map(str, mean)), "--image-std", ",".join(map(str, std))]
    args = ["tiny:classifier", *SHAPE, "--rank", "1", "--distill", "images", *norm, "--steps", "1", "--calibrate"]
    torch.manual_seed(0)
    assert cli.main([*args, "-o", "out"]) == 0, capsys.readouterr().err
    got = json.loads((work / "out" / "report.json").read_text())["calibration"]
    # the reference: the same model calibrated in the library on the images normalised by hand
    torch.manual_seed(0)
    model = tiny_module(work).classifier().eval()
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    images = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    expected = convert_model(model, images[:1], ConvertConfig(rank=1), calibration=CalibrationConfig(images))
    report = expected.report.calibration
    assert got["samples"] == report.samples == 20
    assert got["svd_output_rel_error"] == pytest.approx(report.svd_output_rel_error, rel=1e-5)
    assert got["output_rel_error"] == pytest.approx(report.output_rel_error, rel=1e-5)


def test_the_original_is_run_once_for_the_layers_that_fit_ahead_with_the_same_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*(m for _ in range(4) for m in (nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()))).eval()
    data, outputs, passes = correlated(24, 2), [], []
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    for budget in (0, calibrate_module.AHEAD_BYTES):  # one layer per pass of the original, then all four at once
        monkeypatch.setattr(calibrate_module, "AHEAD_BYTES", budget)
        calls.clear()
        calibration = CalibrationConfig(data, batch_size=8)
        result = convert_model(model, data[:1], ConvertConfig(rank=1), calibration=calibration)
        outputs.append(result.model(data))
        passes.append(len(calls))
    handle.remove()
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert passes[0] - passes[1] == 3 * 3  # 3 batches: the original's passes for layers 2, 3 and 4 are saved
