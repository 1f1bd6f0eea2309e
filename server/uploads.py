"""Receive a Submit stream's upload (the model, then any distillation data files): chunks straight to disk, each
file's size and sha256 checked, its content identified without ever loading it (nothing is unpickled, and no data
file is read as tensors, in the server's process)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc

from convert.files import file_kind, tensor_file_kind, weights_kind
from server.config import ServerConfig
from server.rpc import converter_pb2 as pb
from server.wire import DATA_FORMATS, MODEL_FORMATS, WEIGHTS_FORMATS

__all__ = [
    "MAX_CHUNK",
    "MAX_DATA_FILES",
    "SAFE_ALTERNATIVE",
    "UploadError",
    "check_header",
    "data_file_names",
    "receive",
]

MAX_CHUNK = 1 << 20  # bytes: the largest chunk a client may send (the server's receive limit, plus the header's)
MAX_DATA_FILES = 32  # distillation data files in one submission

_DATA_ROLES = {
    pb.DataFile.TRAIN: "data",
    pb.DataFile.VAL: "val",
    pb.DataFile.CALIBRATE: "calibrate",
}  # each role's name in its stored file's name
# The suffix an uploaded model or weights file is stored under, by what it holds (see server.wire's tables).
_SUFFIX = {"pt2": ".pt2", "torch.save": ".pt", "torchscript": ".pt", "safetensors": ".safetensors"}
# Why each model file format is code.
_WHAT = {
    "pt2": "a .pt2 archive (torch.export.save), whose loader can fall back to unpickling",
    "torch.save": "a whole-model pickle (torch.save(model))",
    "torchscript": "a TorchScript archive",
}
SAFE_ALTERNATIVE = (
    "send the architecture as a factory spec from the server's allowlist and the weights as .safetensors or a "
    "state dict, e.g. `convert torchvision.models:resnet18 --weights model.safetensors --server HOST:PORT`"
)


class UploadError(Exception):
    """An upload the server refuses: a gRPC status code and a message a person can act on."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_header(header: pb.SubmitHeader, config: ServerConfig) -> None:
    """Everything about a submission that can be refused before a byte of it is received.

    Raises:
        UploadError: INVALID_ARGUMENT or RESOURCE_EXHAUSTED.
    """
    if len(header.data_files) > MAX_DATA_FILES:
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the header lists {len(header.data_files)} data files, over the limit of {MAX_DATA_FILES}: give a file "
            "per model input (or one file keyed by input name) for training, and likewise for validation",
        )
    total = header.size_bytes + sum(file.size_bytes for file in header.data_files)
    if total > config.max_upload_bytes:
        count = len(header.data_files)
        what, fix = (
            (f"upload (the model and {count} data file{'s' * (count > 1)})", "smaller files (fewer inputs)")
            if count
            else ("upload", "a smaller file")
        )
        raise UploadError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the {what} is {total / 2**20:.1f} MiB, over this server's limit of {config.max_upload_mb} MiB: send "
            f"{fix}, or ask the operator for a larger --max-upload-mb",
        )
    _check_sha256(header.sha256, "sha256")
    for index, file in enumerate(header.data_files):
        what = f"data_files[{index}]"
        if file.role not in _DATA_ROLES:
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, f"{what}.role is not set: TRAIN, VAL or CALIBRATE")
        if file.format not in DATA_FORMATS:
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT, f"{what}.format is not set: NPY, NPZ, SAFETENSORS or TORCH_SAVE"
            )
        if file.size_bytes == 0:
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"data file {_data_label(file, index)} is empty: send a tensor file of inputs shaped (N, ...)",
            )
        _check_sha256(file.sha256, f"{what}.sha256")
    source = header.WhichOneof("source")
    if source == "factory":
        weights = header.factory.weights_format
        if (weights == pb.Factory.NONE) != (header.size_bytes == 0):
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a factory's upload is its weights: set weights_format for a non-empty upload, NONE for an empty one",
            )
        return
    if source != "model_file":
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT, "the header names no model: set model_file or factory (a factory spec)"
        )
    kind = MODEL_FORMATS.get(header.model_file.format)
    if kind is None:
        raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "model_file.format is not set: PT2, PICKLE or TORCHSCRIPT")
    if header.size_bytes == 0:
        raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "the model file is empty: send the whole file")
    if not config.allow_untrusted_code:
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"this server does not load {_WHAT[kind]}: loading one runs code from the file. Instead, "
            f"{SAFE_ALTERNATIVE} (or, for files you trust, start the server with --allow-untrusted-code)",
        )


def data_file_names(header: pb.SubmitHeader) -> tuple[list[str], list[str], list[str]]:
    """Where `receive` keeps the header's data files in the job's folder: (training, validation, calibration
    files), each in upload order (`upload-data-1.npy`, `upload-val-1.pt`, `upload-calibrate-1.npy`, ...). The
    client's file names are never used."""
    names = _data_names(header)
    roles = [file.role for file in header.data_files]
    return tuple(  # type: ignore[return-value]
        [name for name, role in zip(names, roles, strict=True) if role == wanted]
        for wanted in (pb.DataFile.TRAIN, pb.DataFile.VAL, pb.DataFile.CALIBRATE)
    )


def receive(requests: Iterator[pb.SubmitRequest], header: pb.SubmitHeader, folder: Path) -> Path | None:
    """Write the chunks that follow the header into `folder`, one file after the other, check each, and rename it
    into place once checked: the model (or weights) after what it holds (`upload.pt2`, `upload.pt`,
    `upload.safetensors`), each data file as `data_file_names` says.

    Returns:
        The uploaded model file, or None for an empty upload (a factory without weights).

    Raises:
        UploadError: INVALID_ARGUMENT for a truncated or oversized stream, a sha256 mismatch, or content that is
            not what the header says.
    """
    chunks = _chunks(requests)
    model = _receive_file(chunks, folder / "upload.part", header.size_bytes, header.sha256, "the upload")
    model = _place_model(model, header, folder)
    for index, (file, name) in enumerate(zip(header.data_files, _data_names(header), strict=True)):
        label = f"data file {_data_label(file, index)}"
        partial = _receive_file(chunks, folder / f"{name}.part", file.size_bytes, file.sha256, label)
        declared, found = DATA_FORMATS[file.format], tensor_file_kind(partial)
        if found != declared:
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{label} is {f'a {found} file' if found else 'not a tensor file'}, not the declared "
                f"{pb.DataFile.Format.Name(file.format)}: send a file saved with numpy.save, numpy.savez, "
                "safetensors or torch.save, and declare its format",
            )
        partial.rename(folder / name)
    if next(chunks, None) is not None:
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the upload is longer than the header's sizes (size_bytes, and each data file's): set each size to its "
            "file's size",
        )
    return model


def _chunks(requests: Iterator[pb.SubmitRequest]) -> Iterator[bytes]:
    for request in requests:
        if request.WhichOneof("part") != "chunk":
            raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "only the stream's first message may be a header")
        yield request.chunk


def _receive_file(chunks: Iterator[bytes], partial: Path, size: int, sha256: str, what: str) -> Path:
    """Write the next `size` bytes of the stream (whole chunks) to `partial`, and check their sha256."""
    digest, received = hashlib.sha256(), 0
    with open(partial, "wb") as f:
        while received < size:
            chunk = next(chunks, None)
            if chunk is None:
                raise UploadError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what} is truncated: {received} of {size} bytes arrived; send the whole file again",
                )
            received += len(chunk)
            if received > size:
                raise UploadError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{what} is longer than its size in the header ({size} bytes), or a chunk holds bytes of two "
                    "files: set the size to the file's size, and start each file with a new chunk",
                )
            f.write(chunk)
            digest.update(chunk)
    if sha256 and digest.hexdigest() != sha256.lower():
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the sha256 of {what} is {digest.hexdigest()}, not {sha256.lower()} as the header says: the file "
            "changed or was corrupted on the way; send it again",
        )
    return partial


def _place_model(partial: Path, header: pb.SubmitHeader, folder: Path) -> Path | None:
    """Check that the model upload is what the header says, and name it after that (None: no upload)."""
    if header.WhichOneof("source") == "factory":
        declared = WEIGHTS_FORMATS.get(header.factory.weights_format)
        found = weights_kind(partial) if declared else None
        if declared and found != declared:
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the weights upload is {_describe(found)}, not the declared {declared}: send a .safetensors file "
                "or a state dict saved with torch.save(model.state_dict())",
            )
    else:
        declared = MODEL_FORMATS[header.model_file.format]
        found = file_kind(partial)
        if found != declared:
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the uploaded model file is {_describe(found)}, not the declared {declared}: check that the file "
                "is complete and is a torch.save or torch.export.save archive",
            )
    if found is None:
        partial.unlink()
        return None
    return partial.rename(folder / f"upload{_SUFFIX[found]}")


def _data_names(header: pb.SubmitHeader) -> list[str]:
    """The names of the header's data files in the job's folder, in upload order, numbered from 1 per role."""
    names, counts = [], dict.fromkeys(_DATA_ROLES, 0)
    for file in header.data_files:
        counts[file.role] += 1
        names.append(f"upload-{_DATA_ROLES[file.role]}-{counts[file.role]}{DATA_FORMATS[file.format]}")
    return names


def _data_label(file: pb.DataFile, index: int) -> str:
    """A data file as the client knows it, for messages."""
    return os.path.basename(file.filename)[:200] or f"{index + 1}"


def _check_sha256(value: str, field: str) -> None:
    if value and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
        raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, f"{field} must be 64 hex digits (or empty, not checked)")


def _describe(kind: str | None) -> str:
    return (
        "not a PyTorch file (neither safetensors nor a torch.save or torch.export.save archive)"
        if kind is None
        else kind
    )
