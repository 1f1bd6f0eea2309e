"""The runtimes a converted model is timed on: ONNX Runtime (devices, sessions, export + parity, benchmark) and
PyTorch itself (`torch_bench`), sharing one harness (`timing`) and one `BenchConfig` (`config`)."""

import lazy_loader

# imported on first use, from the table in __init__.pyi (as `convert`'s own names)
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
