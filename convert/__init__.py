"""Turn standard convolutions into depthwise-separable or grouped ones, with weights from a truncated SVD.

>>> from convert import BenchConfig, ConvertConfig, convert_model, save_result
>>> x = torch.randn(1, 3, 224, 224)
>>> result = convert_model(model, x, ConvertConfig(target="separable"))
>>> result.model, result.report.totals
>>> save_result(result, "out", original=model, example_inputs=x, benchmark=BenchConfig(batch_sizes=(1, 8)))
"""

from convert.auto import AutoConfig, AutoPlan, plan_for_speed
from convert.bench import BenchConfig, benchmark_onnx, open_session, validate_onnx_file
from convert.config import ConvertConfig
from convert.errors import ConvertError
from convert.onnx_export import OnnxConfig, ParityError, check_parity, export_onnx
from convert.pipeline import ConversionResult, convert_model, inspect_model
from convert.report import Benchmark, LayerReport, OnnxExport, OnnxReport, Report, Totals, plot_benchmark
from convert.save import save_result

__all__ = [
    "AutoConfig",
    "AutoPlan",
    "BenchConfig",
    "Benchmark",
    "ConversionResult",
    "ConvertConfig",
    "ConvertError",
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
    "export_onnx",
    "inspect_model",
    "open_session",
    "plan_for_speed",
    "plot_benchmark",
    "save_result",
    "validate_onnx_file",
]
