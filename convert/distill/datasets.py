"""The datasets distillation reads: tensors in memory, image files decoded when read, and seeded random inputs.

Every item is a Sample: a tuple of tensors, one per model input, each shaped like one example input without its
batch dimension; `collate` stacks samples into a Batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

__all__ = [
    "Batch",
    "ImageFiles",
    "ImageTransform",
    "Sample",
    "SyntheticInputs",
    "TensorInputs",
    "collate",
    "stream_seed",
    "to_device",
]

Sample = tuple[torch.Tensor, ...]  # one sample: a tensor per model input, without the batch dimension
Batch = tuple[torch.Tensor, ...]  # samples stacked: a tensor per model input, the batch in dim 0
ImageTransform = Callable[[Any], torch.Tensor]  # PIL image -> (C, H, W) float tensor


class TensorInputs(Dataset[Sample]):
    """Inputs held in memory: sample i is (t[i] for each input tensor t)."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tuple(tensors)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> Sample:
        return tuple(t[index] for t in self.tensors)


class ImageFiles(Dataset[Sample]):
    """Image files, decoded when read: sample i is (transform(image i),)."""

    def __init__(self, paths: Sequence[Path], mode: str, transform: ImageTransform, dtype: torch.dtype) -> None:
        self.paths, self.mode, self.transform, self.dtype = list(paths), mode, transform, dtype

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return (self.transform(image.convert(self.mode)).to(self.dtype),)


class SyntheticInputs(Dataset[Sample]):
    """Random inputs like the example inputs; sample i is the same on every call (seeded by `seed` and i)."""

    def __init__(self, examples: Sequence[torch.Tensor], seed: int) -> None:
        self.shapes = [tuple(t.shape[1:]) for t in examples]
        self.dtypes = [t.dtype for t in examples]
        self.seed = seed

    def __len__(self) -> int:
        return 1 << 62  # as many as asked for

    def __getitem__(self, index: int) -> Sample:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, index))
        return tuple(
            torch.randn(shape, generator=generator).to(dtype)
            if dtype.is_floating_point
            else torch.randint(0, 2, shape, generator=generator, dtype=dtype)
            for shape, dtype in zip(self.shapes, self.dtypes, strict=True)
        )


def stream_seed(seed: int, index: int) -> int:
    """The generator seed of item `index` of the random stream `seed`: distinct for every index below 2**32.

    torch's CPU generator keeps only the low 32 bits of a seed, so (seed << 32) + index would drop the seed.
    """
    return (seed * 0x9E3779B1 + index) % (1 << 32)


def collate(samples: list[Sample]) -> Batch:
    """Samples stacked into a batch."""
    return tuple(default_collate(samples))


def to_device(batch: Batch, device: torch.device) -> Batch:
    """The batch on `device` (copied without waiting where the source is pinned memory)."""
    return tuple(t.to(device, non_blocking=True) for t in batch)
