"""run_job, the one entry point the CLI and the service's workers share: options in, an output folder out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convert import ConvertConfig, ConvertError
from convert.bench import BenchConfig
from convert.job import JobOptions, output_files, run_job
from convert.onnx_export import OnnxConfig

FACTORY = "torchvision.models:resnet18"


def test_options_round_trip_through_json() -> None:
    options = JobOptions(
        model=FACTORY,
        weights="w.safetensors",
        input_shapes=((1, 3, 32, 32), (2, 4)),
        input_dtype="float64",
        config=ConvertConfig(target="grouped", groups=2, rank="full", exclude="fc"),
        bench=BenchConfig(device="cpu", runs=3, batch_sizes=(1, 4)),
    )
    assert options.onnx == OnnxConfig()  # the benchmark implies an export
    assert JobOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options


def test_distill_settings_are_refused_until_distillation_lands() -> None:
    with pytest.raises(ConvertError, match="distillation is not available in this build"):
        JobOptions(model=FACTORY, distill={"data": "synthetic", "steps": 10})


def test_run_job_writes_the_folder_and_reports_progress(tmp_path: Path) -> None:
    seen: list[tuple[str, float]] = []
    options = JobOptions(model=FACTORY, input_shapes=((1, 3, 64, 64),), config=ConvertConfig(rank="full"))
    report = run_job(options, tmp_path / "out", progress=lambda what, f: seen.append((what, f)))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(output_files(report))
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report.to_dict()
    assert report.output_rel_error < 1e-5  # full rank is exact
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert {"load", "trace", "factorize", "done"} <= {what for what, _ in seen}
    model = torch.load(tmp_path / "out" / "model.pt", weights_only=False)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_run_job_refuses_before_loading(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(ConvertError, match="is not a folder"):
        run_job(JobOptions(model="no.such:factory"), tmp_path / "taken")  # the outdir, not the factory
    with pytest.raises(ConvertError, match="example input shape is unknown"):
        run_job(JobOptions(model=FACTORY), tmp_path / "out")
    assert not (tmp_path / "out").exists()
