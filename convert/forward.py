"""The model's forward as the pipeline calls it: inputs given by name put in its parameters' order, the model and
its inputs cast to one dtype, and why a forward refuses the example inputs, said in the user's terms."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from convert.errors import ConvertError

__all__ = ["MODEL_DTYPES", "cast", "forward_hint", "input_names", "order_by_name"]

MODEL_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _parameters(model: nn.Module) -> list[inspect.Parameter] | None:
    """The parameters of `model.forward` (self left out); None when Python cannot tell (a C or wrapped forward)."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


def input_names(model: nn.Module) -> list[str] | None:
    """Names of the model's positional inputs, from its forward signature; None when it takes *args."""
    parameters = _parameters(model)
    if parameters is None or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return None
    return [p.name for p in parameters if p.kind in _POSITIONAL]


def order_by_name(model: nn.Module, names: Sequence[str]) -> tuple[int, ...]:
    """Where each named input goes: the order of `names` that puts them in the forward's positional order.

    The pipeline (tracing, export, ONNX, the benchmark) passes inputs by position, so the named parameters must be
    the forward's first ones, e.g. `pixel_values` of a Hugging Face vision model, `input_values` of an audio one.

    Args:
        model: the model whose forward takes the inputs.
        names: per example input, the forward parameter it is for.

    Returns:
        The indices of `names` in the forward's order (a permutation of range(len(names))).

    Raises:
        ConvertError: for a name the forward does not have, one given twice, a keyword-only parameter, or a name
            after a parameter that has no input.
    """
    if len(set(names)) != len(names):
        raise ConvertError(f"input names {', '.join(names)} name a parameter twice: give each input once")
    positional = input_names(model)
    if positional is None:
        raise ConvertError("the model's forward takes *args, not named inputs: give the inputs by position")
    parameters = _parameters(model) or []
    for name in names:
        if name not in positional:
            keyword = any(p.name == name and p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
            raise ConvertError(
                f"the model's forward takes `{name}` by keyword only, and the inputs are passed by position: wrap "
                "the model in a module whose forward takes it by position"
                if keyword
                else f"the model's forward has no parameter `{name}`: its inputs are {', '.join(positional) or 'none'}"
            )
    missing = [name for name in positional[: len(names)] if name not in names]
    if missing:
        raise ConvertError(
            f"the model's forward takes `{missing[0]}` before {', '.join(n for n in names if n not in missing)}: "
            f"give `input_shapes` for it too ({missing[0]}=N,C,...), as inputs are passed by position"
        )
    return tuple(sorted(range(len(names)), key=lambda i: positional.index(names[i])))


def cast(
    model: nn.Module, inputs: tuple[torch.Tensor, ...] | None, dtype: str
) -> tuple[nn.Module, tuple[torch.Tensor, ...] | None]:
    """`model` with its floating-point parameters and buffers in `dtype` (in place), and its floating inputs so.

    Raises:
        ConvertError: for a dtype that is not one of MODEL_DTYPES.
    """
    if dtype not in MODEL_DTYPES:
        raise ConvertError(f"`model_dtype` {dtype!r} is not valid: use one of {', '.join(MODEL_DTYPES)}")
    target = MODEL_DTYPES[dtype]
    model = model.to(target)  # nn.Module.to(dtype) casts floating-point tensors only
    if inputs is not None:
        inputs = tuple(t.to(target) if t.is_floating_point() else t for t in inputs)
    return model, inputs


def forward_hint(model: nn.Module, inputs: Sequence[torch.Tensor], error: BaseException) -> str:
    """What to change when `model(*inputs)` raised `error`: the dtype, the inputs' names, or their shapes."""
    weights = {p.dtype for p in model.parameters() if p.is_floating_point()}
    given = {t.dtype for t in inputs if t.is_floating_point()}
    if len(weights) == 1 and given and given != weights:
        (weight,) = weights
        name = str(weight).removeprefix("torch.")
        shown = ", ".join(sorted(str(d).removeprefix("torch.") for d in given))
        return (
            f"the model's weights are {name} and the inputs {shown}: set `input_dtype`={name}, or cast the model "
            f"with `model_dtype`={shown}"
        )
    parameters = _parameters(model) or []
    keyword = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty]
    required = [p.name for p in parameters if p.kind in _POSITIONAL and p.default is p.empty]
    if keyword:
        return (
            f"the model's forward needs keyword arguments {', '.join(keyword)}: the inputs are passed by position, "
            "so wrap the model in a module whose forward takes them by position"
        )
    if isinstance(error, TypeError) and len(required) != len(inputs):
        takes = ", ".join(required) or "no inputs"
        return f"the model's forward takes {takes}: give one `input_shapes` per input, by position or NAME=N,C,..."
    return "give `input_shapes` of the shapes it expects (by name: pixel_values=1,3,224,224)"
