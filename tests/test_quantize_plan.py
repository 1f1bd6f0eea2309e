"""The planner on INT8: one-layer latencies measured and cached per INT8 format, and a plan for the quantized
runtime whose target is over the float original."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_quantize import FAST, SHAPE, classifier

from convert.auto import AutoConfig, plan_for_speed
from convert.auto.latency import LatencyCache, LayerShape, measure_layer
from convert.report.markdown import auto_markdown
from convert.runtime.quantize import FORMATS
from convert.surgery.find import ConvSpec
from convert.surgery.plan import LayerPlan

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"),
    pytest.mark.usefixtures("torchscript_exports"),
]


def test_layer_latencies_are_measured_and_cached_per_int8_format(tmp_path: Path) -> None:
    spec = ConvSpec(2, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, "zeros")
    layer, plans = LayerShape(spec, (1, 16, 8, 8), False), [None, LayerPlan(16, 1, True, 9)]
    cache = LatencyCache(tmp_path)
    float_ms = measure_layer(layer, plans, FAST, cache)
    int8_ms = measure_layer(layer, plans, FAST, cache, quantize=FORMATS["qdq-u8s8"])
    assert cache.measured == 4 and cache.hits == 0  # INT8 latencies are not the float ones
    assert measure_layer(layer, plans, FAST, cache, quantize=FORMATS["qdq-u8s8"]) == int8_ms
    assert measure_layer(layer, plans, FAST, cache, quantize=FORMATS["qop-u8s8"]) and cache.measured == 6
    assert cache.hits == 2 and all(ms > 0 for ms in float_ms + int8_ms)
    formats = [json.loads(p.read_text())["what"].get("quantize", {}).get("name") for p in tmp_path.glob("*.json")]
    assert sorted(formats, key=str) == sorted([None, None, "qdq-u8s8", "qdq-u8s8", "qop-u8s8", "qop-u8s8"], key=str)


@pytest.mark.slow
def test_the_planner_times_int8_and_keeps_the_target_over_the_float_original(tmp_path: Path) -> None:
    model, x = classifier(), torch.randn(SHAPE)
    config = AutoConfig(
        target_speedup=1.5, device="cpu", threads=1, runs=3, warmup=1, max_candidates=2,
        cache_dir=str(tmp_path / "cache"), quantize=("qdq-u8s8", "qop-u8s8"),
    )  # fmt: skip
    report = plan_for_speed(model, x, config).report
    assert report.quantize in ("qdq-u8s8", "qop-u8s8") and report.quantized_ms > 0
    timed = {}  # the end-to-end timings in the cache, by file
    for path in (tmp_path / "cache").glob("*.json"):
        entry = json.loads(path.read_text())
        if "model" in entry["what"]:
            timed[entry["what"]["model"]] = entry["ms"]
    # the float original (the target's baseline) and in each format (model0), the fastest plan in the one chosen
    assert set(timed) == {"model0.onnx", "model0.qdq-u8s8.onnx", "model0.qop-u8s8.onnx",
                          f"model1.{report.quantize}.onnx"}  # fmt: skip
    assert report.baseline_ms == timed["model0.onnx"] and report.fastest_ms == timed[f"model1.{report.quantize}.onnx"]
    assert (
        report.quantized_ms
        == timed[f"model0.{report.quantize}.onnx"]
        == min(timed["model0.qdq-u8s8.onnx"], timed["model0.qop-u8s8.onnx"])
    )
    assert report.predicted_speedup == pytest.approx(report.baseline_ms / report.predicted_ms)
    layers = [json.loads(p.read_text())["what"] for p in (tmp_path / "cache").glob("*.json")]
    assert {w["quantize"]["name"] for w in layers if "layer" in w} == {report.quantize}
    assert "planned for INT8" in auto_markdown(report)
