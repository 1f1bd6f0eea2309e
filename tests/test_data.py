"""Distillation inputs: every source format, the validation split, the image transform, and bad sources."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from convert import ConvertError, image_transform, load_data
from convert.distill.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_VAL_INPUTS,
    SYNTHETIC_VAL_INPUTS,
    input_names,
)
from convert.files import tensor_file_kind

EXAMPLE = torch.zeros(1, 3, 8, 8)


def samples(dataset) -> torch.Tensor:
    """All samples of a single-input dataset, stacked."""
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def write_images(folder: Path, count: int, mode: str = "RGB", size: tuple[int, int] = (12, 10)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        color = (index * 20, 100, 200, 255)[: len(Image.new(mode, (1, 1)).getbands())]
        Image.new(mode, size, color if len(color) > 1 else color[0]).save(folder / f"img{index}.png")


# --- tensor files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["pt", "pt-dict", "pt-list", "npy", "npz", "safetensors"])
def test_tensor_files(tmp_path: Path, form: str) -> None:
    inputs = torch.randn(20, 3, 8, 8)
    path = tmp_path / f"x.{form.split('-')[0]}"
    if form == "pt":
        torch.save(inputs, path)
    elif form == "pt-dict":
        torch.save({"x": inputs}, path)
    elif form == "pt-list":
        torch.save([inputs], path)
    elif form == "npy":
        np.save(path, inputs.double().numpy())  # float64 is cast to the input's float32
    elif form == "npz":
        np.savez(path, images=inputs.numpy())
    else:
        save_file({"images": inputs}, path)
    data = load_data(str(path), EXAMPLE, seed=3)
    assert (data.train_size, data.val_size, data.synthetic) == (18, 2, False)
    train, val = samples(data.train), samples(data.val)
    assert train.dtype == torch.float32
    # the split is a partition of the file's inputs, in order within each part
    together = torch.cat([train, val])
    order = torch.tensor([data.train.indices + data.val.indices]).flatten()
    torch.testing.assert_close(together, inputs[order].float())
    assert sorted(order.tolist()) == list(range(20))
    assert str(path) in data.source
    assert tensor_file_kind(path) == path.suffix  # what the service checks an upload against, without loading it


def test_tensor_file_kind_of_other_files(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "compressed.npz", x=np.zeros((2, 3)))
    assert tensor_file_kind(tmp_path / "compressed.npz") == ".npz"
    others = {
        "noise.npy": b"\x93NUMP" + bytes(range(50)),  # one byte short of the magic
        "pickle.pt": pickle.dumps([1, 2, 3]),  # a legacy (not zip) pickle: not a torch.save archive
        "text.safetensors": b"hello, not tensors" * 10,
    }
    for name, content in others.items():
        (tmp_path / name).write_bytes(content)
        assert tensor_file_kind(tmp_path / name) is None, name
    with pytest.raises(ConvertError, match="no such file"):
        tensor_file_kind(tmp_path / "absent.npy")


def test_split_is_seeded_and_capped(tmp_path: Path) -> None:
    inputs = torch.randn(30, 3, 8, 8)
    a, b, c = (load_data(inputs, EXAMPLE, seed=s) for s in (0, 0, 1))
    assert a.val.indices == b.val.indices != c.val.indices
    assert load_data(inputs, EXAMPLE, val_fraction=0.5).val_size == 15
    big = torch.zeros(MAX_VAL_INPUTS * 11, 3, 1, 1)
    assert load_data(big, torch.zeros(1, 3, 1, 1)).val_size == MAX_VAL_INPUTS


def test_val_source_and_synthetic(tmp_path: Path) -> None:
    val = torch.randn(7, 3, 8, 8)
    torch.save(val, tmp_path / "val.pt")
    data = load_data(torch.randn(5, 3, 8, 8), EXAMPLE, val=tmp_path / "val.pt")
    assert (data.train_size, data.val_size) == (5, 7)  # nothing held out of DATA
    torch.testing.assert_close(samples(data.val), val)

    synthetic = load_data("synthetic", EXAMPLE, seed=5)
    assert synthetic.synthetic and synthetic.train_size is None and synthetic.val_size == SYNTHETIC_VAL_INPUTS
    first = synthetic.train[0][0]
    assert first.shape == (3, 8, 8) and torch.equal(first, load_data("synthetic", EXAMPLE, seed=5).train[0][0])
    assert not torch.equal(first, load_data("synthetic", EXAMPLE, seed=6).train[0][0])
    assert not torch.equal(first, synthetic.train[1][0])
    held_out = samples(synthetic.val)
    assert not any(torch.equal(held_out[i], synthetic.train[j][0]) for i in range(3) for j in range(3))
    tokens = load_data("synthetic", torch.zeros(1, 12, dtype=torch.int64)).train[0][0]
    assert tokens.dtype == torch.int64 and set(tokens.tolist()) <= {0, 1}


class TwoInputs(nn.Module):
    def forward(self, image: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        return image.mean() + signal.mean()


def test_multi_input_by_file_and_by_name(tmp_path: Path) -> None:
    examples = (torch.zeros(1, 3, 8, 8), torch.zeros(1, 4, 10))
    image, signal = torch.randn(6, 3, 8, 8), torch.randn(6, 4, 10)
    np.save(tmp_path / "image.npy", image.numpy())
    torch.save(signal, tmp_path / "signal.pt")
    save_file({"signal": signal, "image": image}, tmp_path / "both.safetensors")
    names = input_names(TwoInputs())
    assert names == ["image", "signal"]
    by_file = load_data([tmp_path / "image.npy", tmp_path / "signal.pt"], examples, val_fraction=0.5)
    by_name = load_data(tmp_path / "both.safetensors", examples, input_names=names, val_fraction=0.5)
    for data in (by_file, by_name):
        first = data.train[0]
        index = data.train.indices[0]
        torch.testing.assert_close(first[0], image[index])
        torch.testing.assert_close(first[1], signal[index])
    with pytest.raises(ConvertError, match=r"named signal, image; the model's inputs are x, y: key the tensors"):
        load_data({"signal": signal, "image": image}, examples, input_names=["x", "y"])
    with pytest.raises(ConvertError, match=r"holds 1 input tensor\(s\), the model takes 2"):
        load_data(tmp_path / "image.npy", examples)
    with pytest.raises(ConvertError, match="different numbers of samples"):
        load_data([image, signal[:5]], examples)


# --- image folders ------------------------------------------------------------------------------------------------


def test_image_folder_layouts_and_default_transform(tmp_path: Path) -> None:
    write_images(tmp_path / "classes" / "cat", 3)
    write_images(tmp_path / "classes" / "dog", 2)
    data = load_data(tmp_path / "classes", EXAMPLE)
    assert "5 images" in data.source and "ImageFolder layout, 2 class folders" in data.source
    assert data.train_size + data.val_size == 5
    sample = data.train[0][0]
    assert sample.shape == (3, 8, 8) and sample.dtype == torch.float32  # resized from 12x10
    # a constant image: each channel is (value / 255 - mean) / std
    path = sorted((tmp_path / "classes").rglob("*.png"))[data.train.indices[0]]
    color = torch.tensor(Image.open(path).getpixel((0, 0)), dtype=torch.float32) / 255
    expected = (color - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(sample[:, 4, 4], expected, rtol=1e-5, atol=1e-5)

    write_images(tmp_path / "flat", 4, mode="L")
    gray = load_data(tmp_path / "flat", torch.zeros(1, 1, 6, 6))
    assert "flat" in gray.source and gray.train[0][0].shape == (1, 6, 6)


def test_image_transform_is_overridable(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 3)
    plain = image_transform((1, 3, 4, 4), mean=(0, 0, 0), std=(1, 1, 1))
    data = load_data(tmp_path / "imgs", torch.zeros(1, 3, 4, 4), transform=plain)
    assert 0 <= float(data.train[0][0].min()) and float(data.train[0][0].max()) <= 1  # not normalised
    with pytest.raises(ConvertError, match="gives tensors shaped 3x4x4, the model takes 3x8x8"):
        load_data(tmp_path / "imgs", EXAMPLE, transform=plain)


# --- bad sources: one ConvertError each, before anything is trained ------------------------------------------------


def _bad(tmp_path: Path, case: str) -> tuple[object, torch.Tensor]:
    """(source, example input) for a bad case."""
    if case == "empty-folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "notes.txt").write_text("no images here")
        return tmp_path / "empty", EXAMPLE
    if case == "gray-images-for-rgb":
        write_images(tmp_path / "gray", 2, mode="L")
        return tmp_path / "gray", EXAMPLE
    if case == "rgba-images-for-rgb":
        write_images(tmp_path / "rgba", 2, mode="RGBA")
        return tmp_path / "rgba", EXAMPLE
    if case == "corrupt-image":
        write_images(tmp_path / "imgs", 2)
        (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
        return tmp_path / "imgs", EXAMPLE
    if case == "images-for-1d-input":
        write_images(tmp_path / "imgs", 2)
        return tmp_path / "imgs", torch.zeros(1, 3, 50)
    if case == "wrong-shape":
        torch.save(torch.randn(10, 3, 9, 9), tmp_path / "x.pt")
        return tmp_path / "x.pt", EXAMPLE
    if case == "no-batch-dim":
        np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
        return tmp_path / "x.npy", EXAMPLE
    if case == "integer-dtype":
        np.save(tmp_path / "x.npy", np.zeros((10, 3, 8, 8), np.uint8))
        return tmp_path / "x.npy", EXAMPLE
    if case == "float-for-token-ids":
        torch.save(torch.randn(10, 12), tmp_path / "x.pt")
        return tmp_path / "x.pt", torch.zeros(1, 12, dtype=torch.int64)
    if case == "nan-values":
        torch.save(torch.full((10, 3, 8, 8), float("nan")), tmp_path / "x.pt")
        return tmp_path / "x.pt", EXAMPLE
    if case == "not-a-tensor-file":
        (tmp_path / "x.pt").write_bytes(b"hello, not a tensor" * 10)
        return tmp_path / "x.pt", EXAMPLE
    if case == "pickle-of-code":
        (tmp_path / "x.pt").write_bytes(pickle.dumps(Path("/etc/passwd")))  # weights_only refuses globals
        return tmp_path / "x.pt", EXAMPLE
    if case == "object-npy":
        np.save(tmp_path / "x.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return tmp_path / "x.npy", EXAMPLE
    if case == "state-dict-of-strings":
        torch.save({"note": "text"}, tmp_path / "x.pt")
        return tmp_path / "x.pt", EXAMPLE
    if case == "unknown-suffix":
        (tmp_path / "x.csv").write_text("1,2,3\n")
        return tmp_path / "x.csv", EXAMPLE
    if case == "missing":
        return tmp_path / "absent.npy", EXAMPLE
    if case == "single-input-no-val":
        torch.save(torch.randn(1, 3, 8, 8), tmp_path / "x.pt")
        return tmp_path / "x.pt", EXAMPLE
    raise AssertionError(case)


BAD = {
    "empty-folder": r"holds no images .*add images",
    "gray-images-for-rgb": r"has 1 channel\(s\) \(mode L\), the model takes 3: convert the images to RGB",
    "rgba-images-for-rgb": r"has 4 channel\(s\) \(mode RGBA\), the model takes 3",
    "corrupt-image": r"cannot read image .*broken\.png .*remove or replace",
    "images-for-1d-input": r"folder of images feeds a model with one float input shaped N,C,H,W",
    "wrong-shape": r"shaped 10x3x9x9, the model takes inputs shaped N x 3x8x8",
    "no-batch-dim": r"shaped 3x8x8, the model takes inputs shaped N x 3x8x8",
    "integer-dtype": r"holds uint8 values, the model takes float32 inputs",
    "float-for-token-ids": r"holds float32 values, the model takes int64 inputs: save integer data",
    "nan-values": r"NaN, infinite or complex values",
    "not-a-tensor-file": r"cannot read inputs from .*x\.pt .*save a tensor",
    "pickle-of-code": r"cannot read inputs from .*x\.pt \(UnpicklingError",
    "object-npy": r"cannot read inputs from .*x\.npy .*allow_pickle",
    "state-dict-of-strings": r"holds a dict, not tensors of inputs",
    "unknown-suffix": r"not a known data format: give a folder of images, a tensor file",
    "missing": r"absent\.npy: no such file or folder \(for random inputs, give 'synthetic' instead\)",
    "single-input-no-val": r"holds 1 input: give at least 2 .* or give `val`",
}


@pytest.mark.parametrize(("case", "expected"), BAD.items(), ids=list(BAD))
def test_bad_sources(tmp_path: Path, case: str, expected: str) -> None:
    source, example = _bad(tmp_path, case)
    with pytest.raises(ConvertError, match=expected) as raised:
        load_data(source, example)
    assert "\n" not in str(raised.value)
