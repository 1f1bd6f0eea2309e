"""`--runtime torch` through the planner, the job and the command: `--to auto` plans from layer latencies measured
on PyTorch (cached under the runtime's settings), keeps every layer that factorizing makes slower, and the
benchmark of a conversion times the modules themselves (no ONNX export implied)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from test_auto import FAST, TINY, small_net
from test_cli import ok, run, tree

from convert import AutoConfig, BenchConfig, ConvertConfig, FactorizedConv, cli, plan_for_speed
from convert.auto import latency
from convert.job import JobOptions
from convert.report.markdown import auto_markdown
from convert.report.text import auto_where
from convert.runtime.torch_bench import benchmark_torch

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

TORCH = dict(FAST, runtime="torch", device="cpu")


def test_plan_on_the_torch_runtime_is_cached_under_its_settings(tmp_path: Path) -> None:
    model, x = small_net(), torch.randn(1, 8, 16, 16)
    config = AutoConfig(target_speedup=1.5, cache_dir=str(tmp_path), **TORCH)
    first = plan_for_speed(model, x, config)
    report = first.report
    assert report.runtime == "torch" and report.torch is not None and not report.torch.compile
    assert auto_where(report) == "cpu (PyTorch, eager, float32)" and report.measured > 0
    assert "on cpu (PyTorch, eager, float32)" in auto_markdown(report)
    again = plan_for_speed(model, x, config)
    assert again.report.measured == 0 and [r.chosen for r in again.report.layers] == [r.chosen for r in report.layers]
    # another runtime, or another setting of this one, is another measurement: nothing is read across
    for other in (dataclasses.replace(config, runtime="ort"), dataclasses.replace(config, channels_last=True)):
        plan = plan_for_speed(model, x, other)
        assert plan.report.cached == 0 and plan.report.measured == report.measured


def test_auto_keeps_the_layers_that_factorizing_makes_slower(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On the torch runtime, every factorized form of the 3x3 conv "2" is measured 50x slower than the conv, and
    those of "0" 50x faster: "2" stays as it is, whether the target is in reach or not, and "0" is converted."""
    real = benchmark_torch

    def measured(models, inputs, config, **kw):
        result = real(models, inputs, config, **kw)
        for module, timing in zip(models, result.models, strict=True):
            if isinstance(module, FactorizedConv) and module.kernel_size == (3, 3):
                factor = 50.0 if module.in_channels == 32 else 1 / 50
                timing.latency = [dataclasses.replace(lat, p50=lat.p50 * factor) for lat in timing.latency]
        return result

    monkeypatch.setattr(latency, "benchmark_torch", measured)
    model, x = small_net(), torch.randn(1, 8, 16, 16)
    for target in (1.05, 50.0):  # in reach, and out of reach (the fastest plan)
        plan = plan_for_speed(
            model, x, AutoConfig(target_speedup=target, cache_dir=str(tmp_path / str(target)), **TORCH)
        )
        rows = {row.name: row for row in plan.report.layers}
        slower = rows["2"]
        assert all(c.latency_ms > slower.candidates[0].latency_ms for c in slower.candidates[1:])
        assert slower.chosen == 0 and plan.plans["2"] == "auto: kept (no candidate is faster)", target
    assert rows["0"].chosen != 0  # out of reach: the fastest plan converts the layer that got faster


def test_auto_on_torch_benchmarks_on_torch_without_onnx() -> None:
    options = JobOptions("m", config=ConvertConfig(target="auto"), auto=AutoConfig(runtime="torch", dtype="bfloat16"))
    assert options.bench == BenchConfig(device="cpu", runtime="torch", dtype="bfloat16") and options.onnx is None
    ort = JobOptions("m", bench=BenchConfig(device="cpu"))
    assert ort.onnx is not None  # ONNX Runtime times the ONNX files
    assert JobOptions("m", bench=BenchConfig(device="cpu", runtime="torch")).onnx is None


# --- the command ---------------------------------------------------------------------------------------------------

ARGS = ["tiny:build", "--input-shape", "1,8,16,16", "--device", "cpu", "--threads", "1", "--runs", "5", "--warmup", "1"]


def test_cli_auto_on_torch_writes_no_onnx_and_keeps_slower_layers(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY)
    args = [*ARGS, "--to", "auto", "--runtime", "torch", "--target-speedup", "1.2", "--cache-dir", "cache"]
    result = ok(run(tmp_path, *args, "-o", "out"))
    assert "--to auto: target 1.2x, predicted" in result.stderr and "PyTorch latency (ms)" in result.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["auto"]["runtime"] == "torch" and report["auto"]["torch"]["dtype"] == "float32"
    assert report["benchmark"]["runtime"] == "torch" and report["benchmark"]["providers"] == []
    assert report["onnx"] is None and not list((tmp_path / "out").glob("*.onnx"))
    for layer in report["auto"]["layers"]:  # measured for real: where every form is slower, the conv stays
        keep, *forms = layer["candidates"]
        if all(form["latency_ms"] > keep["latency_ms"] for form in forms):
            assert layer["chosen"] == 0, layer["name"]


def test_cli_benchmark_on_torch_and_bench_of_the_output_folder(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY)
    args = [*ARGS, "--benchmark", "--runtime", "torch", "--bench-dtype", "bfloat16", "--channels-last"]
    ok(run(tmp_path, *args, "--batch-sizes", "1,2", "-o", "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    bench = report["benchmark"]
    assert (bench["runtime"], bench["torch"]["dtype"], bench["torch"]["channels_last"]) == ("torch", "bfloat16", True)
    assert [m["name"] for m in bench["models"]] == ["original", "converted"] and bench["batch_sizes"] == [1, 2]
    assert report["onnx"] is None and (tmp_path / "out" / "benchmark.png").stat().st_size > 0
    result = ok(run(tmp_path, "bench", "tiny:build", "out", "--runtime", "torch", "--device", "cpu", "--json"))
    timed = json.loads(result.stdout)
    assert [m["name"] for m in timed["models"]] == ["tiny:build", "out"] and timed["runtime"] == "torch"
    assert [lat["batch"] for lat in timed["models"][1]["latency"]] == [1]  # the shape from out/report.json


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--compile", "--benchmark"], ["compile", "runtime"]),
        (["--runtime", "torch"], ["--runtime", "--benchmark"]),
        (["--benchmark", "--runtime", "torch", "--device", "tensorrt"], ["tensorrt", "cuda"]),
        (["--to", "auto", "--bench-dtype", "float16"], ["dtype", "runtime"]),
        (["bench", "x.onnx", "--input-shape", "1,3,8,8"], ["--input-shape goes with --runtime torch"]),
    ],
    ids=["compile-on-ort", "runtime-without-benchmark", "tensorrt-on-torch", "dtype-on-ort", "bench-shape-on-ort"],
)
def test_cli_refuses_settings_that_cannot_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], words
) -> None:
    (tmp_path / "tiny.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = tree(tmp_path)
    argv = args if args[0] == "bench" else [*ARGS, *args, "-o", "out"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert all(word in captured.err for word in words), captured.err
    assert tree(tmp_path) == before


@pytest.mark.cuda
def test_cli_auto_on_cuda(tmp_path: Path) -> None:
    """--to auto --runtime torch --device cuda: layers and the model timed on the GPU, in bfloat16, channels-last."""
    (tmp_path / "tiny.py").write_text(TINY)
    args = ["tiny:build", "--input-shape", "8,8,32,32", "--device", "cuda", "--runs", "10", "--warmup", "2"]
    args += ["--to", "auto", "--runtime", "torch", "--bench-dtype", "bfloat16", "--channels-last"]
    ok(run(tmp_path, *args, "--target-speedup", "1.5", "--cache-dir", "cache", "-o", "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["auto"]["torch"]["device_name"] == torch.cuda.get_device_name()
    assert report["benchmark"]["device"] == "cuda" and report["benchmark"]["models"][0]["device_memory_bytes"] > 0
