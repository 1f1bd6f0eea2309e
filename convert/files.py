"""What a file is, without loading it: model archives, weights and tensor files, told apart by their first bytes
and zip directory alone (nothing is unpickled). The service checks uploads with these before any worker reads them.
"""

from __future__ import annotations

import math
import os
import resource
import zipfile
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import torch

from convert.errors import ConvertError

__all__ = [
    "FileKind",
    "check_readable",
    "check_tensor_budget",
    "declared_tensor_bytes",
    "memory_budget",
    "file_kind",
    "model_file_kind",
    "read_tensor_file",
    "tensor_file_kind",
    "weights_kind",
]

FileKind = Literal["torchscript", "pt2", "torch.save"]
_NPY_MAGIC = b"\x93NUMPY"  # the first bytes of a .npy file (numpy.lib.format)


def read_tensor_file(path: Path) -> Any:
    """What a .safetensors file holds, or a torch.save file read with weights_only=True: tensors and plain
    containers, never code. Raises the reader's own error."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def file_kind(path: str | os.PathLike[str]) -> FileKind | None:
    """What a model file is, from the names in its zip archive alone: nothing in it is read or unpickled.

    Returns "torchscript" (torch.jit.save), "pt2" (torch.export.save), "torch.save" (a whole-model pickle or a
    state dict: only unpickling tells which), or None for anything else (not a zip archive, truncated).
    """
    names = _zip_names(Path(path))
    if names is None:
        return None
    if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
        return "torchscript"
    if any(name.endswith("/archive_format") for name in names):
        return "pt2"
    return "torch.save"


def weights_kind(path: str | os.PathLike[str]) -> Literal["safetensors", "torch.save"] | None:
    """What a weights file is, from its first bytes and zip directory alone (nothing is unpickled): a
    safetensors file (8-byte little-endian header length, then a JSON header), a torch.save archive, or None.

    Raises:
        ConvertError: when it is missing or unreadable.
    """
    path = Path(path)
    check_readable(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return "safetensors"
    return "torch.save" if file_kind(path) == "torch.save" else None


def model_file_kind(path: str | os.PathLike[str]) -> FileKind:
    """`file_kind` of a file that must be a model file.

    Raises:
        ConvertError: when it is missing, unreadable, or not a PyTorch archive.
    """
    path = Path(path)
    check_readable(path)
    kind = file_kind(path)
    if kind is None:
        raise ConvertError(
            f"{path} is not a PyTorch model file (not a torch.save or torch.export.save archive): "
            "check that it is complete, or pass a factory spec package.module:callable"
        )
    return kind


def tensor_file_kind(path: str | os.PathLike[str]) -> str | None:
    """The tensor-file format of `path` as its suffix (.npy, .npz, .safetensors, .pt), from its first bytes and
    zip directory alone: nothing in it is loaded or unpickled. None when it is none of them.

    Raises:
        ConvertError: when it is missing or unreadable.
    """
    path = Path(path)
    kind = weights_kind(path)  # safetensors, a zip archive (torch.save or numpy.savez), or None
    if kind is None:
        with open(path, "rb") as f:
            return ".npy" if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC else None
    if kind == "torch.save":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return ".npz" if all(name.endswith(".npy") for name in names) else ".pt"
    return ".safetensors"


def check_readable(path: Path) -> None:
    if not path.exists():
        raise ConvertError(f"{path}: no such file (for a factory, write package.module:callable)")
    if not path.is_file():
        raise ConvertError(f"{path} is not a file: give the model file itself")
    if not os.access(path, os.R_OK):
        raise ConvertError(f"{path} is not readable: check its permissions")


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def declared_tensor_bytes(path: str | os.PathLike[str]) -> int:
    """The bytes that a tensor file's tensors take once loaded, from its headers alone (nothing is decompressed
    beyond them): a .npy's header (shape x itemsize), each .npz member's, the sizes in a zip archive's directory
    (torch.save), a safetensors file's size.

    Raises:
        ConvertError: for a header that declares more data than the file (or the member) holds.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with open(path, "rb") as f:
            return _npy_bytes(f, path.stat().st_size, path.name)
    if suffix in (".npz", ".pt", ".pth"):
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.infolist()
                if suffix != ".npz":
                    return sum(member.file_size for member in members)
                total = 0
                for member in members:
                    with archive.open(member) as f:
                        total += _npy_bytes(f, member.file_size, f"{path.name}/{member.filename}")
                return total
        except (zipfile.BadZipFile, OSError):
            return path.stat().st_size  # not a zip: the reader refuses it
    return path.stat().st_size


def memory_budget() -> int:
    """Bytes of tensors a file may hold for this process to read it: half of what it may still take (the free
    RAM, and its RLIMIT_DATA: a service worker's limit), the rest left to the model and the work on it."""
    import psutil

    budget = psutil.virtual_memory().available
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    if limit != resource.RLIM_INFINITY:
        budget = min(budget, limit)
    return budget // 2


def check_tensor_budget(path: str | os.PathLike[str], budget: int | None = None) -> None:
    """Refuse a tensor file whose tensors would take more than `budget` bytes (default: `memory_budget()`), before
    any of it is read.

    Raises:
        ConvertError: naming the sizes and what to do.
    """
    budget = memory_budget() if budget is None else budget
    declared = declared_tensor_bytes(path)
    if declared > budget:
        raise ConvertError(
            f"{Path(path).name} holds {declared / 2**20:.0f} MiB of tensors once loaded, more than the "
            f"{budget / 2**20:.0f} MiB this process may give them: give fewer or smaller inputs"
        )


def _npy_bytes(f: IO[bytes], size: int, what: str) -> int:
    """Bytes of the array a .npy stream declares; `size` is the stream's length."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_2_0 if version >= (2, 0) else np.lib.format.read_array_header_1_0
        shape, _, dtype = read_header(f)
    except (ValueError, OSError, SyntaxError) as e:
        raise ConvertError(f"{what} is not a readable .npy array ({e}): save it with numpy.save") from None
    declared = math.prod(shape) * dtype.itemsize
    if declared > size:
        raise ConvertError(
            f"{what} declares a {'x'.join(map(str, shape))} array of {declared} bytes but holds {size}: the file is "
            "damaged or forged; save it again with numpy.save"
        )
    return declared
