"""The public names of `convert.runtime` (imported on first use: see __init__.py)."""

from .bench import benchmark_onnx
from .config import BenchConfig
from .export import OnnxConfig, export_onnx
from .parity import check_parity
from .sessions import open_session, validate_onnx_file
from .torch_bench import benchmark_torch

__all__ = [
    "BenchConfig",
    "OnnxConfig",
    "benchmark_onnx",
    "benchmark_torch",
    "check_parity",
    "export_onnx",
    "open_session",
    "validate_onnx_file",
]
