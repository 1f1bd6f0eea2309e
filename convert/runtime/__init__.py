"""Everything ONNX Runtime: devices, sessions, export + parity, benchmark."""

from convert.errors import ParityError
from convert.runtime.bench import BenchConfig, benchmark_onnx
from convert.runtime.export import OnnxConfig, export_onnx
from convert.runtime.parity import check_parity
from convert.runtime.sessions import open_session, validate_onnx_file

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
