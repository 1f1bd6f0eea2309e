"""Turn standard convolutions into depthwise-separable or grouped ones, with weights from a truncated SVD.

>>> from convert import ConvertConfig, convert_model
>>> result = convert_model(model, torch.randn(1, 3, 224, 224), ConvertConfig(target="separable"))
>>> result.model, result.report.totals
"""

from convert.config import ConvertConfig
from convert.errors import ConvertError
from convert.pipeline import ConversionResult, convert_model, inspect_model
from convert.report import LayerReport, Report, Totals
from convert.save import save_result

__all__ = [
    "ConversionResult",
    "ConvertConfig",
    "ConvertError",
    "LayerReport",
    "Report",
    "Totals",
    "convert_model",
    "inspect_model",
    "save_result",
]
