"""Model sources: a factory spec `package.module:callable` (+ weights), a .pt2 archive, a whole-model pickle.

The file's content decides its kind, not its suffix. A whole-model pickle runs code from the file when it
loads, so the caller is told first (`on_warning`); TorchScript archives are refused with what to do instead.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import pickle
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convert.errors import ConvertError, one_line
from convert.files import check_readable, model_file_kind, read_tensor_file
from convert.surgery.trace import plain_graph_module

__all__ = [
    "DTYPES",
    "INPUT_SEED",
    "load_model",
    "LoadedModel",
    "make_inputs",
    "parse_input_shape",
    "parse_model_arg",
    "resolve_spec",
    "SHORT_NAMES",
]

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
}
INPUT_SEED = 0  # example inputs are random but the same on every run
# `prefix:NAME` -> (the module a model NAME resolves to, the registry's builder, its arguments that keep it offline).
SHORT_NAMES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "timm": ("timm.models", "timm:create_model", {"pretrained": False}),
    "torchvision": ("torchvision.models", "torchvision.models:get_model", {"weights": None}),
}
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")  # where training checkpoints keep the weights


@dataclasses.dataclass
class LoadedModel:
    """A model ready to convert."""

    model: nn.Module
    kind: str  # "factory" | "pt2" | "pickle"
    example_inputs: tuple[torch.Tensor, ...] | None = None  # stored in a .pt2 archive
    exported: torch.export.ExportedProgram | None = None  # the .pt2 program


def load_model(
    source: str,
    weights: str | os.PathLike[str] | None = None,
    on_warning: Callable[[str], None] | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Load a model from a factory spec or a file.

    Args:
        source: `package.module:callable` (called with `model_args`; the current folder is importable), a short
            name `timm:NAME` (timm.create_model) or `torchvision:NAME` (torchvision.models.get_model), never with
            pretrained weights, or the path of a .pt2 archive (torch.export.save) or a whole-model pickle.
        weights: a state dict (.safetensors, or a torch.save file loaded with weights_only=True) to load into
            a factory-built model.
        on_warning: receives one-line warnings (e.g. that loading a pickle runs code from it).
        model_args: keyword arguments of the factory (e.g. num_classes=10).

    Raises:
        ConvertError: with a one-line message that says what to do.
    """
    path = Path(source)
    if path.exists() or ":" not in source:
        if weights is not None or model_args:
            option = "`weights`" if weights is not None else "`model_args`"
            raise ConvertError(f"{option} goes with a factory spec (package.module:callable), not a model file")
        return _load_file(path, on_warning or (lambda _message: None))
    model = _build_from_factory(source, dict(model_args or {}))
    if weights is not None:
        _load_weights(model, Path(weights))
    return LoadedModel(model, "factory")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224)."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConvertError(f"input shape {text!r} is not valid: use comma-separated positive sizes, e.g. 1,3,224,224")
    return shape


def parse_model_arg(text: str) -> tuple[str, Any]:
    """'num_classes=10' -> ("num_classes", 10): the value as a Python literal, else the text itself ('act=relu').

    Raises:
        ConvertError: without `=`, or with a key that is not an identifier.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise ConvertError(f"model argument {text!r} is not valid: use NAME=VALUE, e.g. num_classes=10")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):  # a bare word: the string itself
        return key, value


def resolve_spec(spec: str) -> str:
    """The `package.module:callable` a factory spec names: `timm:resnet50` -> `timm.models:resnet50`,
    `torchvision:resnet18` -> `torchvision.models:resnet18`; any other spec as it is."""
    prefix, _, name = spec.partition(":")
    if prefix in SHORT_NAMES:
        return f"{SHORT_NAMES[prefix][0]}:{name}"
    return spec


def make_inputs(shapes: Sequence[Sequence[int]], dtype: str = "float32") -> tuple[torch.Tensor, ...]:
    """Random example inputs of the given shapes (seeded, so every run sees the same)."""
    if dtype not in DTYPES:
        raise ConvertError(f"input dtype {dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    generator = torch.Generator().manual_seed(INPUT_SEED)
    if DTYPES[dtype].is_floating_point:
        return tuple(torch.randn(*s, generator=generator).to(DTYPES[dtype]) for s in shapes)
    return tuple(torch.randint(0, 2, tuple(s), generator=generator) for s in shapes)


def _build_from_factory(spec: str, model_args: dict[str, Any]) -> nn.Module:
    prefix, _, name = spec.partition(":")
    if prefix in SHORT_NAMES:  # a registry's name: its builder, with the arguments that keep it offline
        _, builder, offline = SHORT_NAMES[prefix]
        factory = _import_factory(builder)
        call = f"in {builder.replace(':', '.')}({name!r}, ...)"
        return _call_factory(spec, lambda: factory(name, **(offline | model_args)), call)
    factory = _import_factory(spec)
    arguments = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
    how = f"when called with ({arguments})" if arguments else "when called with no arguments"
    return _call_factory(spec, lambda: factory(**model_args), how)


def _call_factory(spec: str, build: Callable[[], Any], how: str) -> nn.Module:
    try:
        model = build()
    except Exception as e:  # the user's factory failed
        raise ConvertError(
            f"factory {spec!r} failed {how} ({one_line(e)}): check its arguments (`model_args`, e.g. num_classes=10)"
        ) from e
    if not isinstance(model, nn.Module):
        raise ConvertError(f"factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConvertError(f"factory spec {spec!r} is not valid: use package.module:callable")
    _cwd_importable()
    try:
        factory: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as e:
        raise ConvertError(
            f"cannot import factory {spec!r} ({one_line(e)}): check the spelling, or put its module on PYTHONPATH"
        ) from e
    except Exception as e:  # the user's module raised while importing (SyntaxError, ...)
        raise ConvertError(
            f"importing {module_name!r} for factory {spec!r} failed ({one_line(e)}): fix the error in that module"
        ) from e
    if not callable(factory):
        raise ConvertError(f"factory {spec!r} is not callable: name a function or class that builds the model")
    return factory


def _load_weights(model: nn.Module, path: Path) -> None:
    state = _read_state_dict(path)
    if all(key.startswith("module.") for key in state):  # saved from DataParallel / DDP
        state = {key.removeprefix("module."): value for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        missing, unexpected = _key_mismatch(model, state)
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} keys, e.g. {missing[:2]}" if missing else "",
                f"unexpected {len(unexpected)} keys, e.g. {unexpected[:2]}" if unexpected else "",
            )
            if part
        ) or one_line(e)
        raise ConvertError(f"{path} does not fit the model ({detail}): check the factory and the weights file") from e


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    check_readable(path)
    try:
        state = read_tensor_file(path)
    except Exception as e:  # any failure to read is a bad file
        raise ConvertError(
            f"cannot read weights from {path} ({one_line(e)}): give a state dict saved as .safetensors "
            "or with torch.save(model.state_dict())"
        ) from e
    if isinstance(state, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(
            f"{path} does not hold a state dict of tensors: save one with torch.save(model.state_dict())"
        )
    return state


def _key_mismatch(model: nn.Module, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)


def _load_file(path: Path, warn: Callable[[str], None]) -> LoadedModel:
    kind = model_file_kind(path)
    if kind == "torchscript":
        raise ConvertError(
            f"{path} is a TorchScript archive, which cannot be rewritten: re-save the model with "
            "torch.export.save(torch.export.export(model, example_args), 'model.pt2'), or pass its factory"
        )
    if kind == "pt2":
        return _load_pt2(path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise ConvertError(f"cannot read {path} ({one_line(e)}): is the file complete?") from e
    except Exception as e:  # corrupt or truncated archive
        raise ConvertError(f"cannot read {path} ({one_line(e)}): is the file complete?") from e
    else:
        raise ConvertError(
            f"{path} holds weights only: pass the architecture as a factory spec (e.g. torchvision.models:resnet18) "
            "and the file as `weights`"
        )
    warn(f"loading {path} runs code from the file (a whole-model pickle): only use files you trust")
    _cwd_importable()  # the classes it names may live in the user's own module, as for a factory
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # e.g. the class it needs cannot be imported
        raise ConvertError(
            f"cannot load {path} ({one_line(e)}): the modules that define the model must be importable"
        ) from e
    if not isinstance(model, nn.Module):
        raise ConvertError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module")
    return LoadedModel(model, "pickle")


def _load_pt2(path: Path) -> LoadedModel:
    try:
        exported = torch.export.load(path)
    except Exception as e:
        raise ConvertError(
            f"cannot load the .pt2 archive {path} ({one_line(e)}): re-save it with torch.export.save"
        ) from e
    args, kwargs = exported.example_inputs or ((), {})
    inputs = tuple(args) if not kwargs and all(isinstance(a, torch.Tensor) for a in args) else None
    return LoadedModel(plain_graph_module(exported), "pt2", inputs or None, exported)


def _cwd_importable() -> None:
    """Let imports find the user's own modules in the current folder (the console script does not)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
