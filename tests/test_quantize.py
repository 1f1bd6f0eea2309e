"""INT8 quantization: the files ONNX Runtime writes, the calibration, the accuracy check, the choice of format, the
job's four models and the refusals (the planner's INT8 latencies: test_quantize_plan)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization.calibrate import load_tensors_data
from torch import nn

from convert import ConvertConfig, ConvertError, OnnxConfig, convert_model, export_conversion, export_onnx, load_data
from convert.artifacts import CONVERTED_INT8_ONNX, ORIGINAL_INT8_ONNX, failed_parity_dir, output_files
from convert.auto import AutoConfig
from convert.conversion import Conversion
from convert.distill.data import DistillData
from convert.errors import QuantizationError, outcome_of
from convert.job import JobOptions, run_job
from convert.report.schema import Benchmark, Latency, ModelTiming, QuantizeReport
from convert.runtime import int8
from convert.runtime.bench import BenchConfig
from convert.runtime.int8 import accuracy, quantize_conversion
from convert.runtime.quantize import (
    FORMATS,
    QuantizeConfig,
    SampleReader,
    calibrate,
    device_formats,
    float_ops,
    prepare,
    quantize_file,
)
from convert.runtime.sessions import open_session

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
    pytest.mark.usefixtures("torchscript_exports"),
]

SHAPE = (1, 3, 16, 16)
FAST = BenchConfig(device="cpu", threads=1, warmup=1, runs=3)


def classifier() -> nn.Module:
    """A small CNN with BatchNorm (folded into the convs by the preparation) and a class-score output."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 10),
    )  # fmt: skip
    with torch.no_grad():  # BatchNorm statistics of a trained model, not the identity of a fresh one
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


class Unquantizable(nn.Module):
    """Only ops that ONNX Runtime has no INT8 form for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.abs()) - x.exp()


def _exported(model: nn.Module, path: Path) -> Path:
    export_onnx(model, torch.randn(SHAPE), path, OnnxConfig())
    return path


def _inputs(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, *SHAPE[1:], generator=torch.Generator().manual_seed(seed))


def _reader(path: Path, data: torch.Tensor) -> SampleReader:
    name = open_session(path, "cpu").session.get_inputs()[0].name
    return SampleReader([name], torch.utils.data.TensorDataset(data), range(len(data)), 8)


def _outputs(path: Path, data: torch.Tensor) -> np.ndarray:
    session = open_session(path, "cpu").session
    return session.run(None, {session.get_inputs()[0].name: data.numpy()})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Conversion, Path, DistillData]:
    """The classifier converted at full rank (exact), both models exported, and 80 inputs to calibrate on."""
    folder = tmp_path_factory.mktemp("exported")
    x = torch.randn(SHAPE)
    conversion = convert_model(classifier(), x, ConvertConfig(rank="full"))
    export_conversion(conversion, folder, OnnxConfig())
    return conversion, folder, load_data(_inputs(80), x)


@pytest.fixture(scope="module")
def prepared(
    exported: tuple[Conversion, Path, DistillData], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The classifier's original.onnx prepared and calibrated on 32 inputs: (prepared.onnx, its ranges)."""
    folder = tmp_path_factory.mktemp("quantize")
    prepared = prepare(exported[1] / "original.onnx", folder / "prepared.onnx")
    return prepared, calibrate(prepared, _reader(prepared, _inputs(32)), "minmax", folder / "ranges.json")


def test_preparation_folds_batchnorm_and_keeps_the_function(prepared: tuple[Path, Path]) -> None:
    path, _ = prepared
    ops = [node.op_type for node in onnx.load(path).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 2
    x = _inputs(4, seed=2)
    reference = classifier()(x).detach().numpy()
    assert accuracy([reference], [_outputs(path, x)])[0] < 1e-5


def test_calibration_ranges_are_the_ranges_of_the_inputs(prepared: tuple[Path, Path]) -> None:
    path, ranges = prepared
    data = _inputs(32)
    name = onnx.load(path).graph.input[0].name
    low, high = load_tensors_data(ranges)[name].range_value  # min-max of the input over every calibration input
    assert low.item() == pytest.approx(float(data.min())) and high.item() == pytest.approx(float(data.max()))


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_writes_an_int8_model_close_to_float(
    name: str, prepared: tuple[Path, Path], tmp_path: Path
) -> None:
    path, ranges = prepared
    fmt = FORMATS[name]
    out = quantize_file(path, tmp_path / f"{name}.onnx", fmt, ranges)
    graph = onnx.load(out).graph
    ops = {node.op_type for node in graph.node}
    assert ("QLinearConv" not in ops) == fmt.qdq and ("QuantizeLinear" in ops)
    weights = {t.name: t for t in graph.initializer}
    quantized = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(quantized) == 2  # both conv weights, int8
    for tensor in quantized:  # per channel: one scale per output channel
        scale = weights.get(tensor.name.replace("_quantized", "_scale"))
        assert scale is not None and list(scale.dims) == [tensor.dims[0]]
        if fmt.reduce_range:
            values = onnx.numpy_helper.to_array(tensor)
            assert np.abs(values).max() <= 64  # 7-bit weights
    x = _inputs(16, seed=3)
    error, top1 = accuracy([_outputs(path, x)], [_outputs(out, x)])
    assert error < 0.2 and top1 is not None and top1 >= 0.75


class PartlyQuantizable(nn.Module):
    """A conv (INT8) and ops that ONNX Runtime has no INT8 form for (float)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.conv(x).abs()).exp()


def test_ops_without_an_int8_form_are_named_and_run_in_float(tmp_path: Path) -> None:
    float_path = tmp_path / "float.onnx"
    torch.onnx.export(
        PartlyQuantizable().eval(),
        (torch.randn(SHAPE),),
        float_path,
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},  # the reader feeds batches of 8
    )
    path = prepare(float_path, tmp_path / "prepared.onnx")
    assert float_ops(path, FORMATS["qdq-u8s8"]) == {"Abs": 1, "Sqrt": 1, "Exp": 1}
    ranges = calibrate(path, _reader(path, _inputs(8)), "minmax", tmp_path / "ranges.json")
    ops = [
        n.op_type for n in onnx.load(quantize_file(path, tmp_path / "q.onnx", FORMATS["qop-u8s8"], ranges)).graph.node
    ]
    assert "QLinearConv" in ops and {"Abs", "Sqrt", "Exp"} <= set(ops)


def test_accuracy_is_the_relative_error_and_the_top1_agreement() -> None:
    reference = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    outputs = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 2.0]])  # the first row keeps its top class, the second not
    error, top1 = accuracy([reference], [outputs])
    assert error == pytest.approx(np.sqrt((0.25 + 4 + 4) / 5))
    assert top1 == 0.5
    assert accuracy([reference.ravel()], [outputs.ravel()])[1] is None  # no class dimension


def test_formats_per_device() -> None:
    assert [f.name for f in device_formats(("qop-u8s8", "qdq-s8s8"), "cpu")] == ["qop-u8s8", "qdq-s8s8"]
    assert [f.name for f in device_formats(("qop-u8s8", "qdq-s8s8"), "tensorrt")] == ["qdq-s8s8"]
    with pytest.raises(ConvertError, match="none of `formats` qop-u8s8 runs on cuda: use qdq-"):
        device_formats(("qop-u8s8",), "cuda")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"formats": ("qdq-u4s4",)}, "`formats` qdq-u4s4 is not valid"),
        ({"formats": ()}, "`formats` \\(none\\) is not valid"),
        ({"calibration_samples": 0}, "`calibration_samples`=0 is not valid"),
        ({"calibration_method": "mse"}, "unknown calibration method 'mse'"),
        ({"max_quant_error": 0}, "`max_quant_error`=0 is not valid"),
        ({"calibration": ()}, "`calibration` is empty"),
    ],
)
def test_bad_settings_are_refused(fields: dict, expected: str) -> None:
    with pytest.raises(ConvertError, match=expected):
        QuantizeConfig(**fields)


# --- the stage, through run_job ------------------------------------------------------------------------------------


def _job(tmp_path: Path, **quantize: object) -> JobOptions:
    data = tmp_path / "calibration.pt"
    torch.save(_inputs(80), data)
    return JobOptions(
        model="test_quantize:classifier",
        input_shapes=(SHAPE,),
        config=ConvertConfig(rank="full"),  # exact: the converted model's INT8 errors are the original's
        bench=FAST,
        quantize=QuantizeConfig(calibration=(str(data),), **quantize),
    )


@pytest.mark.slow
def test_job_writes_four_models_side_by_side_and_keeps_the_fastest_format_that_passes(tmp_path: Path) -> None:
    options = _job(tmp_path, formats=("qdq-u8s8", "qdq-u8s7", "qop-u8s8"))
    assert options.bench.device == "cpu" and options.onnx is not None
    report = run_job(options, tmp_path / "out")
    out = tmp_path / "out"
    assert {ORIGINAL_INT8_ONNX, CONVERTED_INT8_ONNX} <= set(output_files(report))
    assert sorted(p.name for p in out.iterdir()) == sorted(output_files(report))
    assert [m.name for m in report.benchmark.models] == ["original", "original int8", "converted", "converted int8"]
    quantize = report.quantize
    assert quantize.calibration_samples == 72 and quantize.check_samples == 8  # 80 inputs, 10% held out
    for model in (quantize.original, quantize.converted):
        assert [c.format for c in model.candidates] == ["qdq-u8s8", "qdq-u8s7", "qop-u8s8"]
        passing = [c for c in model.candidates if c.passed]
        assert model.passed and model.chosen is min(passing, key=lambda c: c.latency_ms)
        assert all(c.passed == (c.rel_error <= quantize.max_quant_error) for c in model.candidates)
        assert model.file_bytes < model.float_bytes / 2  # int8 weights
        assert model.float_ops == {}
    # the INT8 file kept is the one checked: its output on the held-out inputs is as far from float as recorded
    data = torch.load(tmp_path / "calibration.pt")
    check = data[sorted(torch.randperm(80, generator=torch.Generator().manual_seed(0))[:8].tolist())]
    error, _ = accuracy([_outputs(out / "model.onnx", check)], [_outputs(out / CONVERTED_INT8_ONNX, check)])
    assert error == pytest.approx(quantize.converted.rel_error, rel=1e-4)
    assert quantize.converted.float_vs_original < 1e-5  # full rank: the conversion is exact
    restored = type(report).from_dict(json.loads((out / "report.json").read_text()))
    assert restored.quantize == quantize
    markdown = (out / "report.md").read_text()
    assert "## INT8 quantization" in markdown and f"`{CONVERTED_INT8_ONNX}`" in markdown


def _timed(latencies: dict[str, float]):
    """A stand-in for benchmark_onnx that reports the given median per model name."""

    def bench(paths, config, *, names, **_kw) -> Benchmark:
        models = [
            ModelTiming(n, str(p), [Latency(1, 1, *[latencies[n]] * 6, 1.0)], 0, None)
            for n, p in zip(names, paths, strict=True)
        ]
        return Benchmark("cpu", "cpu", "", [], {}, "", 1, 0, 1, None, [1], models, [], [])

    return bench


def _stage(exported: tuple[Conversion, Path, DistillData], folder: Path, **fields: object) -> QuantizeReport:
    """The quantization stage on a copy of the exported files in `folder`."""
    conversion, files, data = exported
    shutil.copytree(files, folder)
    conversion = dataclasses.replace(conversion, report=copy.deepcopy(conversion.report))
    return quantize_conversion(conversion, folder, QuantizeConfig(**fields), data, FAST)


def test_the_fastest_format_that_passes_is_kept(
    exported: tuple[Conversion, Path, DistillData], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    formats = ("qdq-u8s8", "qdq-u8s7")  # full-range and 7-bit weights: never equally accurate
    errors = {c.format: c.rel_error for c in _stage(exported, tmp_path / "probe", formats=formats).converted.candidates}
    better, worse = sorted(formats, key=errors.__getitem__)
    assert errors[better] < errors[worse]
    # the less accurate format is the faster one, and a limit between the two errors fails it: the other is kept
    monkeypatch.setattr(int8, "benchmark_onnx", _timed({"float": 2.0, worse: 0.5, better: 1.0}))
    limit = (errors[better] + errors[worse]) / 2
    strict = _stage(exported, tmp_path / "strict", formats=formats, max_quant_error=limit).converted
    assert strict.format == better and strict.passed and strict.chosen.speedup == 2.0
    assert [c.passed for c in strict.candidates] == [c.format == better for c in strict.candidates]
    loose = _stage(exported, tmp_path / "loose", formats=formats, max_quant_error=1.0).converted
    assert loose.format == worse and loose.chosen.speedup == 4.0  # both pass: the faster
    with pytest.raises(QuantizationError, match=f"the closest, {better}, is"):
        _stage(exported, tmp_path / "none", formats=formats, max_quant_error=1e-9)
    assert (tmp_path / "none" / CONVERTED_INT8_ONNX).is_file()  # the most accurate, for inspection


@pytest.mark.slow
def test_a_failed_check_exits_3_and_keeps_the_files(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="no INT8 format of model.onnx is within `max_quant_error`") as e:
        run_job(_job(tmp_path, formats=("qdq-u8s7",), max_quant_error=1e-9), tmp_path / "out")
    assert outcome_of(e.value).exit_code == 3 and "the files are kept in" in str(e.value)
    failed = failed_parity_dir(tmp_path / "out")
    assert not (tmp_path / "out").exists() and (failed / CONVERTED_INT8_ONNX).is_file()
    kept = json.loads((failed / "report.json").read_text())["quantize"]["converted"]
    assert not kept["passed"] and kept["format"] == "qdq-u8s7"


def test_quantize_needs_calibration_inputs_before_any_work(tmp_path: Path) -> None:
    options = JobOptions(model="test_quantize:classifier", input_shapes=(SHAPE,), quantize=QuantizeConfig())
    with pytest.raises(ConvertError, match="`quantize` calibrates on real inputs: set `calibration`"):
        run_job(options, tmp_path / "out")
    with pytest.raises(ConvertError, match="starts from a float32 model"):
        run_job(dataclasses.replace(_job(tmp_path), input_dtype="float16"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_with_nothing_to_quantize_is_refused(tmp_path: Path) -> None:
    options = dataclasses.replace(_job(tmp_path), model="test_quantize:Unquantizable")
    with pytest.raises(ConvertError, match=r"quantizes none of the ops of original.onnx \(.*: Abs x1, Sqrt x1, Exp x1"):
        run_job(options, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not failed_parity_dir(tmp_path / "out").exists()


def test_options_with_quantize_round_trip_and_plan_for_int8() -> None:
    quantize = QuantizeConfig(calibration=("images/",), calibration_samples=64, formats=("qdq-u8s7",))
    options = JobOptions(model="m", config=ConvertConfig(target="auto"), quantize=quantize)
    assert options.auto.quantize == ("qdq-u8s7",) and options.bench is not None
    assert JobOptions.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    with pytest.raises(ConvertError, match="`auto` plans for INT8 formats with `quantize` only"):
        JobOptions(model="m", config=ConvertConfig(target="auto"), auto=AutoConfig(quantize=("qdq-u8s8",)))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--calibration-method", "entropy"],
            "error: --calibration-method goes with --quantize int8: add --quantize int8",
        ),
        (["--max-quant-error", "0.2"], "error: --max-quant-error goes with --quantize int8: add --quantize int8"),
        (["--quantize", "int8", "--quant-formats", "fp4"], "formats 'fp4' are not valid"),
        (["--quantize", "int8", "--max-quant-error", "0"], "error: --max-quant-error 0.0 is not valid"),
    ],
)
def test_the_cli_refuses_quantize_options_alone_or_bad(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from convert.cli import main

    try:
        status = main(["test_quantize:classifier", "--input-shape", "1,3,16,16", "-o", str(tmp_path / "out"), *argv])
    except SystemExit as e:  # a usage error (argparse)
        status = e.code
    assert status == 2
    assert expected in capsys.readouterr().err and not (tmp_path / "out").exists()
