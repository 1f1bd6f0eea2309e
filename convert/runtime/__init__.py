"""Everything ONNX Runtime: devices, sessions, export + parity, benchmark."""

from convert.runtime.bench import BenchConfig, benchmark_onnx, open_session, validate_onnx_file
from convert.runtime.export import OnnxConfig, ParityError, check_parity, export_onnx

__all__ = [
    "BenchConfig",
    "OnnxConfig",
    "ParityError",
    "benchmark_onnx",
    "check_parity",
    "export_onnx",
    "open_session",
    "validate_onnx_file",
]
