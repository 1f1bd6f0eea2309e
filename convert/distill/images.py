"""Folders of images as distillation inputs: which files count, their checks from the headers, and the default
transform to a model's input (resize, scale, normalise; ImageNet's mean and std for 3 channels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from convert.distill.datasets import ImageFiles, ImageTransform, Sample
from convert.errors import ConvertError, one_line

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_SUFFIXES",
    "OTHER_MEAN",
    "OTHER_STD",
    "image_folder",
    "image_transform",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the default normalisation of 3-channel images
IMAGENET_STD = (0.229, 0.224, 0.225)
OTHER_MEAN, OTHER_STD = 0.5, 0.5  # per channel, for 1- and 4-channel images
_IMAGE_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # model input channels -> PIL mode the images must have


def image_transform(
    shape: Sequence[int], mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> ImageTransform:
    """The default image transform for a model input of `shape` (N, C, H, W).

    PIL image (already in mode L, RGB or RGBA for C = 1, 3, 4) -> uint8 tensor -> resized to H x W
    (bilinear, antialiased; the aspect ratio is not kept) -> float in [0, 1] -> (x - mean) / std per channel,
    with ImageNet's mean and std for 3 channels and 0.5, 0.5 otherwise.
    """
    from torchvision.transforms import v2

    channels, height, width = shape[1], shape[2], shape[3]
    mean = list(mean) if mean is not None else list(IMAGENET_MEAN if channels == 3 else [OTHER_MEAN] * channels)
    std = list(std) if std is not None else list(IMAGENET_STD if channels == 3 else [OTHER_STD] * channels)
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ConvertError(
                f"image {name} has {len(values)} values, the model takes {channels} channels: give one per channel"
            )
    if any(s <= 0 for s in std):
        raise ConvertError(f"image std {std} is not valid: use positive values")
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((height, width), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def image_folder(
    folder: Path, examples: tuple[torch.Tensor, ...], transform: ImageTransform | None
) -> tuple[Dataset[Sample], int, str]:
    """The images under `folder` (subfolders too) as a dataset for a model whose one input is like `examples[0]`,
    every file's header checked now and decoded when read; with its size and a description.

    Raises:
        ConvertError: for a model images cannot feed, no images, or a file that is no image of the right mode.
    """
    from PIL import Image, UnidentifiedImageError

    if len(examples) != 1 or examples[0].dim() != 4 or not examples[0].dtype.is_floating_point:
        shapes = ", ".join("x".join(map(str, t.shape)) for t in examples)
        raise ConvertError(
            f"a folder of images feeds a model with one float input shaped N,C,H,W, not {shapes}: "
            "give tensor files of inputs instead"
        )
    shape = tuple(examples[0].shape)
    channels = shape[1]
    if transform is None and channels not in _IMAGE_MODES:
        raise ConvertError(
            f"the model takes {channels}-channel inputs, which images do not have (1, 3 or 4 channels): "
            "give tensor files of inputs, or an image transform (library)"
        )
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise ConvertError(
            f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}, searched in subfolders too): "
            "add images, or give a tensor file or synthetic"
        )
    mode = _IMAGE_MODES.get(channels, "RGB")
    for path in paths:  # headers only: cheap, and every bad file is found before training
        try:
            with Image.open(path) as image:
                native = _native_mode(image)
        except (UnidentifiedImageError, OSError) as e:
            raise ConvertError(f"cannot read image {path} ({one_line(e)}): remove or replace the file") from e
        bands = 3 if native == "P" else Image.getmodebands(native)
        if transform is None and bands != channels:
            raise ConvertError(
                f"image {path} has {bands} channel(s) (mode {native}), the model takes {channels}: convert the "
                f"images to {mode}, or set `input_shapes` with {bands} channel(s)"
            )
    dataset = ImageFiles(paths, mode, transform or image_transform(shape), examples[0].dtype)
    first = dataset[0][0]
    if tuple(first.shape) != shape[1:]:
        raise ConvertError(
            f"the image transform gives tensors shaped {'x'.join(map(str, first.shape))}, the model takes "
            f"{'x'.join(map(str, shape[1:]))}: make the transform resize to the input shape"
        )
    classes = {p.parent for p in paths}
    layout = (
        f"ImageFolder layout, {len(classes)} class folders"
        if all(p.parent.parent == folder for p in paths) and len(classes) > 1
        else "flat"
        if classes == {folder}
        else "nested folders"
    )
    return dataset, len(paths), f"{len(paths)} images in {folder}/ ({layout})"


def _native_mode(image: Any) -> str:
    """The image's mode; a palette image counts as the mode its palette holds (RGB, or RGBA with transparency)."""
    if image.mode == "P":
        return "RGBA" if "transparency" in image.info else "P"
    return image.mode
