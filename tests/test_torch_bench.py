"""The PyTorch runtime's benchmark: PyTorch modules timed side by side with ONNX Runtime's harness, eager and
compiled, in a dtype and channels-last; its settings refused where they cannot apply; model sources loaded for
`convert bench --runtime torch`; and the same on CUDA where there is a GPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from convert import BenchConfig, ConvertConfig, ConvertError, benchmark_onnx, benchmark_torch, convert_model
from convert.artifacts import save_result
from convert.report.text import BENCH_COLUMNS, benchmark_rows, describe_benchmark
from convert.runtime.torch_bench import load_timed_models, prepare_module

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

# one thread: see conftest
FAST = BenchConfig(runtime="torch", device="cpu", threads=1, warmup=1, runs=5, batch_sizes=(1, 3))
X = torch.randn(1, 3, 16, 16)


def two_models() -> list[nn.Module]:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    light = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 32, 1)).eval()
    return [dense, light]


def test_benchmark_two_modules_eager() -> None:
    models = two_models()
    steps: list[tuple[str, float]] = []
    result = benchmark_torch(
        models, X, FAST, names=["dense", "light"], macs=[1000, 250], progress=lambda *s: steps.append(s)
    )

    assert (result.runtime, result.device, result.requested_device, result.threads) == ("torch", "cpu", "cpu", 1)
    assert (result.providers, result.provider_options, result.ort_version) == ([], {}, None)
    assert result.torch is not None and result.torch.version == torch.__version__ and result.torch.device_name
    assert (result.torch.compile, result.torch.dtype, result.torch.channels_last) == (False, "float32", False)
    assert (result.warmup, result.runs, result.duration, result.batch_sizes) == (1, 5, None, [1, 3])
    for model in result.models:
        assert [lat.batch for lat in model.latency] == [1, 3] and all(lat.runs == 5 for lat in model.latency)
        assert all(0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99 for lat in model.latency)
        assert model.rss_growth_bytes >= 0 and model.device_memory_bytes is None and model.compile_seconds is None
    assert [(s.batch, s.model, s.baseline) for s in result.speedup] == [(1, "light", "dense"), (3, "light", "dense")]
    for s, base, lat in zip(result.speedup, result.models[0].latency, result.models[1].latency, strict=True):
        assert s.speedup == pytest.approx(base.p50 / lat.p50) and s.mac_ratio == 4.0
    assert steps[-1] == ("timing batch 3", 1.0) and all(0 <= f <= 1 for _, f in steps)
    assert describe_benchmark(result).startswith(
        f"PyTorch {torch.__version__} eager, float32 on cpu (device cpu was asked for)"
    )
    assert "| light | 3 |" in result.to_markdown() and result.table().title == "PyTorch latency (ms)"
    assert torch.get_num_threads() == 1  # the process's setting, restored


def test_a_slower_model_says_so_in_the_table() -> None:
    dense, light = two_models()
    result = benchmark_torch([light, dense], X, FAST, names=["light", "dense"])  # the heavy one second
    rows = {(row[0], row[1]): row for row in benchmark_rows(result)}
    for s in result.speedup:
        cell = rows[(s.model, str(s.batch))][BENCH_COLUMNS.index("speedup")]
        assert cell.endswith("(slower)") == (s.speedup < 1), cell


def test_dtype_and_channels_last_apply_to_copies() -> None:
    model = two_models()[0]
    config = BenchConfig(runtime="torch", device="cpu", threads=1, dtype="bfloat16", channels_last=True)
    prepared = prepare_module(model, torch.device("cpu"), config)
    assert prepared is not model and not prepared.training
    assert all(p.dtype == torch.bfloat16 for p in prepared.parameters())
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())  # the model is untouched
    result = benchmark_torch([model], X, dataclasses.replace(FAST, dtype="bfloat16", channels_last=True))
    assert (result.torch.dtype, result.torch.channels_last) == ("bfloat16", True)
    assert "eager, bfloat16, channels-last" in describe_benchmark(result)
    flat = benchmark_torch([nn.Conv1d(3, 4, 3)], torch.randn(1, 3, 8), dataclasses.replace(FAST, channels_last=True))
    assert any("channels-last applies to 4-D and 5-D tensors: 1 input(s)" in note for note in flat.notes)


@pytest.mark.slow
def test_compiled_models_are_timed_compiled() -> None:
    """Every model and batch size gets its own graph (none falls back to eager), compiled in its first run."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    config = dataclasses.replace(FAST, compile=True, batch_sizes=(1, 2))
    result = benchmark_torch(two_models(), X, config)
    assert counters["stats"]["unique_graphs"] - before >= 2 * 2
    assert result.torch.compile and describe_benchmark(result).startswith(
        f"PyTorch {torch.__version__} compiled, float32"
    )
    assert all(m.compile_seconds is not None and m.compile_seconds > 0 for m in result.models)
    assert all(lat.p50 > 0 for m in result.models for lat in m.latency)


def test_settings_that_cannot_apply_are_refused() -> None:
    for options, message in [
        ({"compile": True}, r"^`compile` goes with `runtime`=torch .*: add `runtime`=torch$"),
        ({"dtype": "bfloat16", "channels_last": True}, r"^`dtype` and `channels_last` go with `runtime`=torch"),
        ({"runtime": "tvm"}, r"^unknown runtime 'tvm': use one of ort, torch$"),
        ({"runtime": "torch", "dtype": "float64"}, r"^`dtype`=float64 is not valid: use one of float32, float16"),
        ({"runtime": "torch", "device": "tensorrt"}, r"^`device`=tensorrt is ONNX Runtime's .*use `device`=cuda"),
    ]:
        with pytest.raises(ConvertError, match=message):
            BenchConfig(**options)
    with pytest.raises(ConvertError, match="use `runtime`=torch"):
        benchmark_torch(two_models(), X, BenchConfig(device="cpu"))
    with pytest.raises(ConvertError, match="use `runtime`=ort"):
        benchmark_onnx(["x.onnx"], FAST)
    with pytest.raises(ConvertError, match=r"^Sequential fails on the PyTorch runtime \(RuntimeError: "):
        benchmark_torch(two_models(), torch.randn(1, 5, 16, 16), FAST)  # 5 channels where the conv takes 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(ConvertError, match=r"^`device`=cuda cannot run here"):
        benchmark_torch(two_models(), X, BenchConfig(runtime="torch", device="cuda"))


def test_sources_of_a_torch_benchmark(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny

    conversion = convert_model(tiny.build().eval(), torch.randn(2, 3, 12, 12), ConvertConfig(rank="full"))
    save_result(conversion, tmp_path / "out")
    warnings: list[str] = []
    models, inputs = load_timed_models(["tiny:build", str(tmp_path / "out")], on_warning=warnings.append)
    assert [tuple(t.shape) for t in inputs] == [(2, 3, 12, 12)]  # from the output folder's report.json
    assert type(models[1][0]).__name__ == "FactorizedConv" and warnings and "runs code" in warnings[0]
    _, inputs = load_timed_models(["tiny:build"], [(1, 3, 9, 9)], "float64")
    assert inputs[0].shape == (1, 3, 9, 9) and inputs[0].dtype == torch.float64
    with pytest.raises(ConvertError, match="the example input shape is unknown: set `input_shapes`"):
        load_timed_models(["tiny:build"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="is a folder without report.json and model.pt"):
        load_timed_models([str(tmp_path / "empty")])


# --- on a GPU --------------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize(
    ("compiled", "dtype", "batch_sizes"),
    [(False, "float32", (1, 8)), (False, "bfloat16", (1, 8)), (True, "bfloat16", (8,))],  # compiling takes seconds
    ids=["eager-float32", "eager-bfloat16", "compiled-bfloat16"],
)
def test_cuda_times_on_the_gpu(compiled: bool, dtype: str, batch_sizes: tuple[int, ...]) -> None:
    autotuner = torch.backends.cudnn.benchmark
    config = BenchConfig(runtime="torch", device="cuda", warmup=2, runs=10, batch_sizes=batch_sizes)
    config = dataclasses.replace(config, compile=compiled, dtype=dtype, channels_last=True)
    result = benchmark_torch(two_models(), X, config, names=["dense", "light"])
    assert result.device == "cuda" and result.threads is None
    assert result.torch.device_name == torch.cuda.get_device_name() and result.torch.compile == compiled
    assert all(m.device_memory_bytes is not None and m.device_memory_bytes > 0 for m in result.models)
    assert any("cudnn.benchmark" in note for note in result.notes)
    assert any("TF32" in note for note in result.notes) == (dtype == "float32" and torch.backends.cudnn.allow_tf32)
    assert all(lat.p50 > 0 for m in result.models for lat in m.latency)
    assert torch.backends.cudnn.benchmark == autotuner  # restored
