"""Turn standard convolutions into depthwise-separable or grouped ones, with weights from a truncated SVD.

>>> from convert import BenchConfig, ConvertConfig, convert_model, save_result
>>> x = torch.randn(1, 3, 224, 224)
>>> result = convert_model(model, x, ConvertConfig(target="separable"))
>>> result.model, result.report.totals
>>> export_conversion(result, "onnx/"); benchmark_conversion(result, "onnx/", BenchConfig(batch_sizes=(1, 8)))
>>> save_result(result, "out")
>>> result = distill_result(result, model, load_data("images/", x), DistillConfig(steps=600))
"""

# The names below are imported when first used, from the table in __init__.pyi (the one list; type checkers read it
# too): `import convert.cli` or `convert.errors` (the CLI's start, the server's) does not import torch.export, onnx,
# the distillation and the benchmark when the command needs none of them. https://scientific-python.org/specs/spec-0001/
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
