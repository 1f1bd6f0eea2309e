"""The public API of `convert` (read by type checkers, and by `lazy_loader` at run time: see __init__.py)."""

from .artifacts import save_result
from .auto import AutoConfig, AutoPlan, LatencyPlanner, plan_for_speed
from .conversion import Conversion
from .distill.config import DistillConfig, DistillEvent
from .distill.data import DistillData, image_transform, load_data
from .distill.trainer import distill_result
from .errors import ConvertError, ParityError
from .report import (
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
from .runtime.bench import benchmark_conversion, benchmark_onnx
from .runtime.config import BenchConfig
from .runtime.export import OnnxConfig, export_conversion, export_onnx
from .runtime.parity import check_parity
from .runtime.sessions import open_session, validate_onnx_file
from .runtime.torch_bench import benchmark_torch
from .surgery.apply import SavedPlanner, apply_plan
from .surgery.calibrate import CalibrationConfig
from .surgery.config import ConvertConfig
from .surgery.modules import FactorizedConv
from .surgery.pipeline import ConversionResult, convert_model, inspect_model
from .surgery.plan import GivenPlanner, UniformPlanner

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
