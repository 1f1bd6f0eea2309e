"""Unlabeled inputs for distillation: a folder of images, tensor files, in-memory tensors, or `synthetic`.

Every source becomes a torch Dataset of samples (`convert.distill.datasets`): tuples of tensors, one per model
input, each shaped like one example input without its batch dimension. Everything is checked when loaded, so a
bad source fails before any training starts. Image folders are checked from the file headers and decoded lazily
(`convert.distill.images`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from convert.common import as_inputs
from convert.distill.datasets import ImageTransform, Sample, SyntheticInputs, TensorInputs
from convert.distill.images import IMAGE_SUFFIXES, IMAGENET_MEAN, IMAGENET_STD, image_folder, image_transform
from convert.errors import ConvertError, one_line
from convert.files import check_tensor_budget, read_tensor_file
from convert.forward import input_names  # here too: distillation data is matched to inputs by name

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "MAX_VAL_INPUTS",
    "SYNTHETIC",
    "SYNTHETIC_VAL_INPUTS",
    "TENSOR_SUFFIXES",
    "DataSource",
    "DistillData",
    "UnlabeledInputs",
    "image_transform",
    "input_names",
    "load_data",
    "load_inputs",
]

SYNTHETIC = "synthetic"
DEFAULT_VAL_FRACTION = 0.1  # of the training inputs held out for validation when no `val` is given ...
MAX_VAL_INPUTS = 1000  # ... but at most this many: validation runs several times per distillation
SYNTHETIC_VAL_INPUTS = 256  # random validation inputs for `synthetic` without `val`
TENSOR_SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".safetensors")
_SYNTHETIC_VAL_SEED_OFFSET = 1 << 31  # validation draws never coincide with training draws

DataSource = str | os.PathLike[str] | torch.Tensor | Sequence[Any] | Mapping[str, torch.Tensor]


@dataclasses.dataclass
class DistillData:
    """Training and validation inputs for `distill_result`."""

    train: Dataset[Sample]
    val: Dataset[Sample]
    train_size: int | None  # None: `synthetic`, as many as the steps draw
    source: str  # what the training inputs are, for the report
    val_source: str  # what the validation inputs are
    synthetic: bool  # the training inputs are random: accuracy on real data is unknown

    @property
    def val_size(self) -> int:
        return len(self.val)


def load_data(
    source: DataSource | Sequence[DataSource],
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    val: DataSource | Sequence[DataSource] | None = None,
    input_names: Sequence[str] | None = None,
    transform: ImageTransform | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
) -> DistillData:
    """Load and check distillation inputs; hold out a validation split unless `val` is given.

    Args:
        source: `"synthetic"` (random inputs like the example inputs: normal for float, 0/1 for integer
            inputs); a folder of images (ImageFolder layout or flat, searched recursively); a tensor file
            of inputs shaped (N, ...) (`.pt`/`.pth` loaded with weights_only=True, `.npy`, `.npz`,
            `.safetensors`); a list with a tensor file per model input; or tensors in memory. A file or
            mapping with several tensors is keyed by the model's input names.
        example_inputs: the model's example inputs: each sample must have their shape without the batch
            dimension, and a dtype of the same kind (floating point data is cast to the input's dtype).
        val: validation inputs, in any form `source` takes; default: `val_fraction` of `source` (at most
            MAX_VAL_INPUTS), chosen at random with `seed`.
        input_names: the model's input names (`input_names(model)`), to match keyed tensors to inputs.
        transform: PIL image -> (C, H, W) tensor for image folders; default `image_transform(shape)`.
        val_fraction: the share of `source` held out when `val` is None.
        seed: for the validation split and synthetic inputs.

    Raises:
        ConvertError: naming the source and what to do, for anything that cannot feed the model.
    """
    examples = as_inputs(example_inputs)
    if not 0 < val_fraction < 1:
        raise ConvertError(f"validation fraction {val_fraction} is not valid: use a fraction in (0, 1), e.g. 0.1")
    if seed < 0:
        raise ConvertError(f"seed {seed} is not valid: use 0 or a positive integer")
    train, size, description = _load_source(source, examples, input_names, transform, seed)
    if val is not None:
        val_set, val_size, val_description = _load_source(val, examples, input_names, transform, seed)
        if val_size is None:
            val_set, val_description = _synthetic_val(val_set)
        return DistillData(train, val_set, size, description, f"--val {val_description}", size is None)
    if size is None:
        val_set, val_description = _synthetic_val(train)
        return DistillData(train, val_set, None, description, val_description, True)
    if size < 2:
        raise ConvertError(
            f"{description} holds {size} input: give at least 2 (one is held out for validation), or give `val`"
        )
    count = min(max(1, round(size * val_fraction)), MAX_VAL_INPUTS, size - 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return DistillData(
        Subset(train, sorted(order[count:])),
        Subset(train, sorted(order[:count])),
        size - count,
        f"{description}, {size - count} for training",
        f"{count} held out of {description}",
        False,
    )


@dataclasses.dataclass(frozen=True)
class UnlabeledInputs:
    """Inputs of one source, checked (e.g. calibration inputs)."""

    dataset: Dataset[Sample]
    size: int | None  # None: `synthetic`, as many as asked for
    description: str  # what they are, for the report

    @property
    def synthetic(self) -> bool:
        return self.size is None


def load_inputs(
    source: DataSource | Sequence[DataSource],
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    *,
    input_names: Sequence[str] | None = None,
    transform: ImageTransform | None = None,
    seed: int = 0,
) -> UnlabeledInputs:
    """Load and check the inputs of one source, as `load_data` does, without a validation split.

    Raises:
        ConvertError: naming the source and what to do, for anything that cannot feed the model.
    """
    dataset, size, description = _load_source(source, as_inputs(example_inputs), input_names, transform, seed)
    return UnlabeledInputs(dataset, size, description)


def _synthetic_val(synthetic: Dataset[Sample]) -> tuple[Dataset[Sample], str]:
    """A fixed set of synthetic validation inputs, none of which training draws."""
    held_out = range(_SYNTHETIC_VAL_SEED_OFFSET, _SYNTHETIC_VAL_SEED_OFFSET + SYNTHETIC_VAL_INPUTS)
    return Subset(synthetic, held_out), f"{SYNTHETIC_VAL_INPUTS} synthetic inputs"


# --- loading and checking -----------------------------------------------------------------------------------------


def _load_source(
    source: Any,
    examples: tuple[torch.Tensor, ...],
    names: Sequence[str] | None,
    transform: ImageTransform | None,
    seed: int,
) -> tuple[Dataset[Sample], int | None, str]:
    """(dataset, its size or None for synthetic, description)."""
    if isinstance(source, (list, tuple)) and len(source) == 1:
        source = source[0]
    if isinstance(source, str) and source == SYNTHETIC:
        return SyntheticInputs(examples, seed), None, "synthetic inputs"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return image_folder(path, examples, transform)
        tensors = _read_tensors(path)
        return _checked(tensors, examples, names, str(path))
    if isinstance(source, (list, tuple)) and all(isinstance(s, (str, os.PathLike)) for s in source):
        if any(str(s) == SYNTHETIC or Path(s).is_dir() for s in source):
            raise ConvertError("give several data sources only as one tensor file per model input")
        tensors = [_single(_read_tensors(Path(s)), str(s)) for s in source]
        return _checked(tensors, examples, None, " + ".join(map(str, source)))
    if isinstance(source, torch.Tensor) or (
        isinstance(source, (list, tuple, Mapping)) and all(isinstance(t, torch.Tensor) for t in _values(source))
    ):
        return _checked(source, examples, names, "tensors in memory")
    raise ConvertError(
        f"data of type {type(source).__name__} is not supported: give 'synthetic', a folder of images, "
        "a tensor file, or tensors"
    )


def _values(source: Any) -> list[Any]:
    return list(source.values()) if isinstance(source, Mapping) else list(source)


def _single(tensors: Any, what: str) -> torch.Tensor:
    if isinstance(tensors, torch.Tensor):
        return tensors
    values = _values(tensors)
    if len(values) != 1:
        raise ConvertError(f"{what} holds {len(values)} tensors: with a file per input, each holds one tensor")
    return values[0]


def _read_tensors(path: Path) -> torch.Tensor | dict[str, torch.Tensor] | list[torch.Tensor]:
    """The tensor, dict or list of tensors in a file; never unpickles code."""
    if not path.exists():
        raise ConvertError(f"{path}: no such file or folder (for random inputs, give 'synthetic' instead)")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConvertError(f"{path} is not a readable file: check the path and its permissions")
    suffix = path.suffix.lower()
    if suffix not in TENSOR_SUFFIXES:
        raise ConvertError(
            f"{path} is not a known data format: give a folder of images, a tensor file "
            f"({', '.join(TENSOR_SUFFIXES)}), or synthetic"
        )
    check_tensor_budget(path)  # from the headers, before a byte of the tensors is read
    try:
        if suffix == ".npy":
            data: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                data = {key: torch.from_numpy(archive[key]) for key in archive.files}
        else:
            data = read_tensor_file(path)
    except Exception as e:  # any failure to read is a bad file
        raise ConvertError(
            f"cannot read inputs from {path} ({one_line(e)}): save a tensor shaped (N, ...) with torch.save, "
            "numpy.save or safetensors"
        ) from e
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (dict, list, tuple)) and data and all(isinstance(t, torch.Tensor) for t in _values(data)):
        return dict(data) if isinstance(data, dict) else list(data)
    raise ConvertError(
        f"{path} holds a {type(data).__name__}, not tensors of inputs: save a tensor shaped (N, ...), "
        "or a dict of them keyed by input name"
    )


def _checked(
    data: Any, examples: tuple[torch.Tensor, ...], names: Sequence[str] | None, what: str
) -> tuple[Dataset[Sample], int, str]:
    tensors = _ordered(data, examples, names, what)
    checked = []
    for index, (tensor, example) in enumerate(zip(tensors, examples, strict=True)):
        label = what if len(examples) == 1 else f"{what} (input {index + 1})"
        checked.append(_check_tensor(tensor, example, label))
    sizes = {len(t) for t in checked}
    if len(sizes) > 1:
        raise ConvertError(f"{what} has different numbers of samples per input ({sorted(sizes)}): give as many of each")
    size = sizes.pop()
    return TensorInputs(checked), size, f"{size} inputs from {what}"


def _ordered(
    data: Any, examples: tuple[torch.Tensor, ...], names: Sequence[str] | None, what: str
) -> list[torch.Tensor]:
    """The tensors of `data` in the order of the model's inputs."""
    if isinstance(data, torch.Tensor):
        data = [data]
    if isinstance(data, Mapping):
        keys = list(data)
        if len(keys) == 1 and len(examples) == 1:
            return [data[keys[0]]]
        if names is None or set(keys) != set(names[: len(examples)]):
            expected = ", ".join(names[: len(examples)]) if names else "unknown: give one file per input instead"
            raise ConvertError(
                f"{what} holds tensors named {', '.join(keys)}; the model's inputs are {expected}: "
                "key the tensors by input name"
            )
        return [data[name] for name in names[: len(examples)]]
    tensors = list(data)
    if len(tensors) != len(examples):
        raise ConvertError(
            f"{what} holds {len(tensors)} input tensor(s), the model takes {len(examples)}: give one tensor "
            "file per input, or a dict keyed by input name"
        )
    return tensors


def _check_tensor(tensor: torch.Tensor, example: torch.Tensor, what: str) -> torch.Tensor:
    sample = tuple(example.shape[1:])
    if tensor.dim() != example.dim() or tuple(tensor.shape[1:]) != sample or len(tensor) == 0:
        raise ConvertError(
            f"{what} is shaped {'x'.join(map(str, tensor.shape))}, the model takes inputs shaped "
            f"N x {'x'.join(map(str, sample))} (from the example input): save inputs of that shape, "
            "or change `input_shapes`"
        )
    if example.dtype.is_floating_point != tensor.dtype.is_floating_point or tensor.dtype in (torch.bool, torch.uint8):
        kind = "floating point" if example.dtype.is_floating_point else "integer"
        raise ConvertError(
            f"{what} holds {str(tensor.dtype).removeprefix('torch.')} values, the model takes "
            f"{str(example.dtype).removeprefix('torch.')} inputs: save {kind} data (e.g. images already "
            "scaled and normalised), or give a folder of image files"
        )
    if tensor.is_complex() or (tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all())):
        raise ConvertError(f"{what} holds NaN, infinite or complex values: give finite real inputs")
    return tensor.to(example.dtype).contiguous()
