"""Turn standard convolutions into depthwise-separable or grouped ones, with weights from a truncated SVD.

>>> from convert import BenchConfig, ConvertConfig, convert_model, save_result
>>> x = torch.randn(1, 3, 224, 224)
>>> result = convert_model(model, x, ConvertConfig(target="separable"))
>>> result.model, result.report.totals
>>> save_result(result, "out", original=model, example_inputs=x, benchmark=BenchConfig(batch_sizes=(1, 8)))
>>> result = distill_result(result, model, load_data("images/", x), DistillConfig(steps=600))
"""

from convert.auto import AutoConfig, AutoPlan, plan_for_speed
from convert.bench import BenchConfig, benchmark_onnx, open_session, validate_onnx_file
from convert.config import ConvertConfig
from convert.data import DistillData, image_transform, load_data
from convert.distill import DistillConfig, DistillEvent, distill_result
from convert.errors import ConvertError
from convert.onnx_export import OnnxConfig, ParityError, check_parity, export_onnx
from convert.pipeline import ConversionResult, convert_model, inspect_model
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
from convert.save import save_result

__all__ = [
    "AutoConfig",
    "AutoPlan",
    "BenchConfig",
    "Benchmark",
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
    "benchmark_onnx",
    "check_parity",
    "convert_model",
    "distill_result",
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
