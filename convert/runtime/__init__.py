"""The runtimes a converted model is timed on: ONNX Runtime (devices, sessions, export + parity, benchmark) and
PyTorch itself (`torch_bench`), sharing one harness (`timing`) and one `BenchConfig` (`config`)."""

from convert.errors import ParityError
from convert.runtime.bench import benchmark_onnx
from convert.runtime.config import BenchConfig
from convert.runtime.export import OnnxConfig, export_onnx
from convert.runtime.parity import check_parity
from convert.runtime.sessions import open_session, validate_onnx_file
from convert.runtime.torch_bench import benchmark_torch

__all__ = [
    "BenchConfig",
    "OnnxConfig",
    "ParityError",
    "benchmark_onnx",
    "benchmark_torch",
    "check_parity",
    "export_onnx",
    "open_session",
    "validate_onnx_file",
]
