"""The ONNX Runtime benchmark: statistics on known timings, the alternating harness, real files side by side
on the CPU (and CUDA where there is a GPU), the shared thread pool, and batch sizes a file cannot run."""

from __future__ import annotations

import math
import random
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from torch import nn

from convert import BenchConfig, ConvertError, OnnxConfig, benchmark_onnx, export_onnx, open_session
from convert.runtime.bench import identity_model
from convert.runtime.sessions import node_providers
from convert.runtime.timing import latency_stats, time_side_by_side

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

FAST = BenchConfig(device="cpu", threads=1, warmup=1, runs=5, batch_sizes=(1, 3))  # one thread: see conftest


# --- statistics ------------------------------------------------------------------------------------------------


def test_latency_stats_ten_runs() -> None:
    seconds = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    random.Random(0).shuffle(seconds)
    lat = latency_stats(4, seconds)
    # nearest rank: p50 is the 5th of 10 sorted times, p90 the 9th, p99 the 10th
    assert (lat.batch, lat.runs, lat.p50, lat.p90, lat.p99, lat.min) == (4, 10, 5.0, 9.0, 10.0, 1.0)
    assert lat.mean == pytest.approx(5.5)
    assert lat.std == pytest.approx(math.sqrt(8.25))  # population: mean of (x - 5.5)^2 over 1..10
    assert lat.throughput == pytest.approx(4 * 1000 / 5.5)  # items per second at the mean latency


def test_latency_stats_hundred_runs_and_outlier() -> None:
    seconds = [i / 1000 for i in range(1, 100)] + [1.0]  # 1..99 ms and one 1000 ms stall
    lat = latency_stats(1, seconds)
    assert (lat.p50, lat.p90, lat.p99, lat.min) == (50.0, 90.0, 99.0, 1.0)  # the stall moves none of them
    assert lat.mean == pytest.approx((sum(range(1, 100)) + 1000) / 100)


def test_latency_stats_one_run_and_none() -> None:
    lat = latency_stats(8, [0.002])
    assert (lat.p50, lat.p90, lat.p99, lat.mean, lat.min, lat.std) == (2.0, 2.0, 2.0, 2.0, 2.0, 0.0)
    assert lat.throughput == pytest.approx(4000.0)
    with pytest.raises(ValueError, match="no timed runs"):
        latency_stats(1, [])


# --- the harness ------------------------------------------------------------------------------------------------


def test_models_alternate_run_by_run_after_warmup() -> None:
    log: list[str] = []
    times = time_side_by_side([lambda: log.append("a"), lambda: log.append("b")], warmup=2, runs=3)
    assert log == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(t) for t in times] == [3, 3] and all(s >= 0 for t in times for s in t)


def test_duration_bounds_the_rounds() -> None:
    fractions: list[float] = []
    times = time_side_by_side([lambda: None], warmup=0, duration=0.05, on_round=fractions.append)
    assert len(times[0]) == len(fractions) > 1 and fractions[-1] == 1.0
    times = time_side_by_side([lambda: None], warmup=0, duration=1e-9)
    assert len(times[0]) == 1  # at least one round


def test_config_rejects_bad_values() -> None:
    for options, message in [
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"runs": 0}, "runs 0"),
        ({"threads": 0}, "threads 0"),
        ({"batch_sizes": (1, 0)}, r"batch sizes \[1, 0\]"),
        ({"duration": -1.0}, "duration -1.0"),
    ]:
        with pytest.raises(ConvertError, match=message):
            BenchConfig(**options)


# --- on a GPU --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_session_really_runs_on_cuda(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
    paths = two_models(tmp_path)
    result = benchmark_onnx(paths, BenchConfig(device="cuda", warmup=1, runs=5))
    assert result.device == "cuda" and result.providers[0] == "CUDAExecutionProvider"
    options = result.provider_options["CUDAExecutionProvider"]
    assert options["cudnn_conv_algo_search"] == "EXHAUSTIVE" and options["use_tf32"] == "1"
    assert any("TF32" in note for note in result.notes)
    assert all(m.device_memory_bytes is not None for m in result.models)


# --- benchmark_onnx on real files ------------------------------------------------------------------------------


def two_models(folder: Path) -> list[Path]:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    dense = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    light = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 32, 1)).eval()
    export_onnx(dense, x, folder / "dense.onnx")
    export_onnx(light, x, folder / "light.onnx")
    return [folder / "dense.onnx", folder / "light.onnx"]


def test_benchmark_two_files(tmp_path: Path) -> None:
    paths = two_models(tmp_path)
    steps: list[tuple[str, float]] = []
    result = benchmark_onnx(
        paths, FAST, names=["dense", "light"], macs=[1000, 250], progress=lambda *s: steps.append(s)
    )

    assert (result.device, result.requested_device, result.threads) == ("cpu", "cpu", 1)
    assert result.providers == ["CPUExecutionProvider"] and result.ort_version
    assert (result.warmup, result.runs, result.duration, result.batch_sizes) == (1, 5, None, [1, 3])
    assert [m.name for m in result.models] == ["dense", "light"]
    for model in result.models:
        assert [lat.batch for lat in model.latency] == [1, 3] and all(lat.runs == 5 for lat in model.latency)
        assert all(0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 for lat in model.latency)
        assert model.rss_growth_bytes >= 0 and model.device_memory_bytes is None
    assert [(s.batch, s.model, s.baseline) for s in result.speedup] == [(1, "light", "dense"), (3, "light", "dense")]
    for s, base, lat in zip(result.speedup, result.models[0].latency, result.models[1].latency, strict=True):
        assert s.speedup == pytest.approx(base.p50 / lat.p50)
        assert s.mac_ratio == 4.0 and s.of_mac_ratio == pytest.approx(s.speedup / 4.0)
    assert steps[-1] == ("timing batch 3", 1.0) and all(0 <= f <= 1 for _, f in steps)
    assert "| light | 3 |" in result.to_markdown()


def test_threads_are_fixed_once_per_process(tmp_path: Path) -> None:
    """ONNX Runtime's shared pool is sized once per process: a later request for another size is noted."""
    path = identity_model(tmp_path / "id.onnx")
    benchmark_onnx([path], FAST)
    result = benchmark_onnx([path], BenchConfig(device="cpu", threads=2, warmup=0, runs=2))
    assert result.threads == 1 and any("asked for 2 threads, ran on 1" in note for note in result.notes)


def test_open_session_and_node_placement(tmp_path: Path) -> None:
    (path, _) = two_models(tmp_path)
    opened = open_session(path, "cpu", threads=1)
    assert opened.device == "cpu" and opened.session.get_providers() == ["CPUExecutionProvider"]
    placed = node_providers(path, ["CPUExecutionProvider"])
    assert list(placed) == ["CPUExecutionProvider"] and placed["CPUExecutionProvider"]["Conv"] == 2


def test_static_batch_rejected_before_timing(tmp_path: Path) -> None:
    export_onnx(nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8), tmp_path / "s.onnx", OnnxConfig(dynamic_batch=False))
    with pytest.raises(ConvertError, match=r"input 'input' has a static batch of 2 and cannot run batch 1: use"):
        benchmark_onnx([tmp_path / "s.onnx"], FAST)
    result = benchmark_onnx(
        [tmp_path / "s.onnx"], BenchConfig(device="cpu", threads=1, warmup=0, runs=2, batch_sizes=(2,))
    )
    assert result.models[0].latency[0].batch == 2
