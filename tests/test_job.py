"""run_job, the one entry point the CLI and the service's workers share: options in, an output folder out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convert import ConvertConfig, ConvertError
from convert.artifacts import output_files
from convert.distill.config import DistillConfig
from convert.job import DistillJob, JobOptions, run_job
from convert.runtime.bench import BenchConfig
from convert.runtime.export import OnnxConfig

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


def test_distill_settings_round_trip_and_run(tmp_path: Path) -> None:
    job = DistillJob(data=("synthetic",), config=DistillConfig(steps=3, batch_size=2, device="cpu"))
    options = JobOptions(model=FACTORY, input_shapes=((2, 3, 64, 64),), distill=job)
    assert JobOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    events: list[str] = []
    report = run_job(options, tmp_path / "out", on_event=lambda event: events.append(event.kind))
    assert report.distill is not None and report.distill.steps == 3 and report.distill.synthetic
    assert events[0] == "start" and events.count("step") == 3 and events[-1] == "end"
    assert set(output_files(report)) <= {p.name for p in (tmp_path / "out").iterdir()}


def test_bad_distill_data_fails_before_any_work(tmp_path: Path) -> None:
    options = JobOptions(model=FACTORY, input_shapes=((1, 3, 32, 32),), distill=DistillJob(data=("missing.npy",)))
    with pytest.raises(ConvertError, match="missing.npy"):
        run_job(options, tmp_path / "out")
    assert not (tmp_path / "out").exists()


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


def test_earlier_results_are_replaced_only_with_overwrite(tmp_path: Path) -> None:
    options = JobOptions(model=FACTORY, input_shapes=((1, 3, 32, 32),))
    run_job(options, tmp_path / "out")
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    rank2 = JobOptions(model=FACTORY, input_shapes=((1, 3, 32, 32),), config=ConvertConfig(rank=2))
    with pytest.raises(ConvertError, match=r"holds the results of an earlier run: pass `overwrite`=True"):
        run_job(rank2, tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == earlier
    report = run_job(rank2, tmp_path / "out", overwrite=True)
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report.to_dict()
    assert report.options["rank"] == 2
