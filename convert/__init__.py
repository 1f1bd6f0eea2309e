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
from convert.auto import AutoConfig, AutoPlan, LatencyPlanner, plan_for_speed
from convert.conversion import Conversion
from convert.distill.config import DistillConfig, DistillEvent
from convert.distill.data import DistillData, image_transform, load_data
from convert.distill.trainer import distill_result
from convert.errors import ConvertError, ParityError
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
from convert.runtime.bench import benchmark_conversion, benchmark_onnx
from convert.runtime.config import BenchConfig
from convert.runtime.export import OnnxConfig, export_conversion, export_onnx
from convert.runtime.parity import check_parity
from convert.runtime.sessions import open_session, validate_onnx_file
from convert.runtime.torch_bench import benchmark_torch
from convert.surgery.apply import SavedPlanner, apply_plan
from convert.surgery.calibrate import CalibrationConfig
from convert.surgery.config import ConvertConfig
from convert.surgery.modules import FactorizedConv
from convert.surgery.pipeline import ConversionResult, convert_model, inspect_model
from convert.surgery.plan import GivenPlanner, UniformPlanner

__all__ = [
    "AutoConfig",
    "AutoPlan",
    "LatencyPlanner",
    "BenchConfig",
    "Benchmark",
    "CalibrationConfig",
    "Conversion",
    "ConversionResult",
    "ConvertConfig",
    "ConvertError",
    "FactorizedConv",
    "GivenPlanner",
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
    "SavedPlanner",
    "Totals",
    "UniformPlanner",
    "apply_plan",
    "benchmark_conversion",
    "benchmark_onnx",
    "benchmark_torch",
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
