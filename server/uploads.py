"""Receive a Submit stream's upload: chunks straight to disk, size and sha256 checked, content identified without
ever loading it (nothing is unpickled in the server's process)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc

from convert.load import file_kind, weights_kind
from server.config import ServerConfig
from server.rpc import converter_pb2 as pb

MAX_CHUNK = 1 << 20  # bytes: the largest chunk a client may send (the server's receive limit, plus the header's)

# The model file formats, as convert.load.file_kind names them, and why each one is code.
_MODEL_FORMATS = {pb.ModelFile.PT2: "pt2", pb.ModelFile.PICKLE: "torch.save", pb.ModelFile.TORCHSCRIPT: "torchscript"}
_WEIGHTS_FORMATS = {pb.Factory.SAFETENSORS: "safetensors", pb.Factory.STATE_DICT: "torch.save"}
_SUFFIX = {"pt2": ".pt2", "torch.save": ".pt", "torchscript": ".pt", "safetensors": ".safetensors"}
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
    if header.size_bytes > config.max_upload_bytes:
        raise UploadError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the upload is {header.size_bytes / 2**20:.1f} MiB, over this server's limit of {config.max_upload_mb} "
            "MiB: send a smaller file, or ask the operator for a larger --max-upload-mb",
        )
    if header.sha256 and (len(header.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in header.sha256)):
        raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "sha256 must be 64 hex digits (or empty, not checked)")
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
    kind = _MODEL_FORMATS.get(header.model_file.format)
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


def receive(requests: Iterator[pb.SubmitRequest], header: pb.SubmitHeader, folder: Path) -> Path | None:
    """Write the chunks that follow the header to `folder/upload.part`, check them, and name the file after what
    it holds (`upload.pt2`, `upload.pt`, `upload.safetensors`).

    Returns:
        The uploaded file, or None for an empty upload (a factory without weights).

    Raises:
        UploadError: INVALID_ARGUMENT for a truncated or oversized stream, a sha256 mismatch, or content that is
            not what the header says.
    """
    partial = folder / "upload.part"
    digest, size = hashlib.sha256(), 0
    with open(partial, "wb") as f:
        for request in requests:
            if request.WhichOneof("part") != "chunk":
                raise UploadError(grpc.StatusCode.INVALID_ARGUMENT, "only the stream's first message may be a header")
            size += len(request.chunk)
            if size > header.size_bytes:
                raise UploadError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the upload is longer than the header's size_bytes ({header.size_bytes}): "
                    "set size_bytes to the file's size",
                )
            f.write(request.chunk)
            digest.update(request.chunk)
    if size < header.size_bytes:
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the upload is truncated: {size} of {header.size_bytes} bytes arrived; send the whole file again",
        )
    if header.sha256 and digest.hexdigest() != header.sha256.lower():
        raise UploadError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the upload's sha256 is {digest.hexdigest()}, not {header.sha256.lower()} as the header says: the file "
            "changed or was corrupted on the way; send it again",
        )
    if header.WhichOneof("source") == "factory":
        declared = _WEIGHTS_FORMATS.get(header.factory.weights_format)
        found = weights_kind(partial) if declared else None
        if declared and found != declared:
            raise UploadError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the weights upload is {_describe(found)}, not the declared {declared}: send a .safetensors file "
                "or a state dict saved with torch.save(model.state_dict())",
            )
    else:
        declared = _MODEL_FORMATS[header.model_file.format]
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


def _describe(kind: str | None) -> str:
    return (
        "not a PyTorch file (neither safetensors nor a torch.save or torch.export.save archive)"
        if kind is None
        else kind
    )
