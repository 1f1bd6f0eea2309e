"""The pass, pure PyTorch: trace -> find -> plan -> factorize -> rewrite -> verify (README.md has the flow)."""

from convert.surgery.config import ConvertConfig
from convert.surgery.pipeline import ConversionResult, convert_model, inspect_model

__all__ = ["ConversionResult", "ConvertConfig", "convert_model", "inspect_model"]
