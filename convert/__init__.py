"""Turn standard convolutions into depthwise-separable or grouped ones, with weights from a truncated SVD.

>>> from convert import BenchConfig, ConvertConfig, convert_model, save_result
>>> x = torch.randn(1, 3, 224, 224)
>>> result = convert_model(model, x, ConvertConfig(target="separable"))
>>> result.model, result.report.totals
>>> export_conversion(result, "onnx/"); benchmark_conversion(result, "onnx/", BenchConfig(batch_sizes=(1, 8)))
>>> save_result(result, "out")
>>> result = distill_result(result, model, load_data("images/", x), DistillConfig(steps=600))
"""

from convert.artifacts import save_result
from convert.auto.planner import AutoConfig, AutoPlan, plan_for_speed
from convert.conversion import Conversion
from convert.distill.data import DistillData, image_transform, load_data
from convert.distill.trainer import DistillConfig, DistillEvent, distill_result
from convert.errors import ConvertError
from convert.report import (
    Benchmark,
    DistillMetrics,
    DistillReport,
    LayerReport,
    OnnxExport,
    OnnxReport,
    Report,
    Totals,
    plot_benchmark,
    plot_distill,
)
from convert.runtime.bench import BenchConfig, benchmark_conversion, benchmark_onnx, open_session, validate_onnx_file
from convert.runtime.export import OnnxConfig, ParityError, check_parity, export_conversion, export_onnx
from convert.surgery.config import ConvertConfig
from convert.surgery.pipeline import ConversionResult, convert_model, inspect_model

__all__ = [
    "AutoConfig",
    "AutoPlan",
    "BenchConfig",
    "Benchmark",
    "Conversion",
    "ConversionResult",
    "ConvertConfig",
    "ConvertError",
    "DistillConfig",
    "DistillData",
    "DistillEvent",
    "DistillMetrics",
    "DistillReport",
    "LayerReport",
    "OnnxConfig",
    "OnnxExport",
    "OnnxReport",
    "ParityError",
    "Report",
    "Totals",
    "benchmark_conversion",
    "benchmark_onnx",
    "check_parity",
    "convert_model",
    "distill_result",
    "export_conversion",
    "export_onnx",
    "image_transform",
    "inspect_model",
    "load_data",
    "open_session",
    "plan_for_speed",
    "plot_benchmark",
    "plot_distill",
    "save_result",
    "validate_onnx_file",
]
