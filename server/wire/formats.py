"""The file format tables of the wire: each proto format of a model, weights or data file, as `convert.files` names
what a file holds (the client picks the format by them, the server stores the upload by them)."""

from __future__ import annotations

from convert.files import FileKind
from server.rpc import converter_pb2 as pb

__all__ = ["DATA_FORMATS", "DATA_SUFFIXES", "MODEL_FORMATS", "WEIGHTS_FORMATS", "model_format", "weights_format"]

# Model files: each proto format, as convert.files.file_kind names what a file's content is.
MODEL_FORMATS: dict[int, FileKind] = {
    pb.ModelFile.PT2: "pt2",
    pb.ModelFile.PICKLE: "torch.save",
    pb.ModelFile.TORCHSCRIPT: "torchscript",
}
# A factory's weights: each proto format, as convert.files.weights_kind names it.
WEIGHTS_FORMATS: dict[int, str] = {pb.Factory.SAFETENSORS: "safetensors", pb.Factory.STATE_DICT: "torch.save"}
# Distillation data files: each proto format, as convert.files.tensor_file_kind names it (the suffix the server
# stores the file under, which convert.distill.data reads it by).
DATA_FORMATS: dict[int, str] = {
    pb.DataFile.NPY: ".npy",
    pb.DataFile.NPZ: ".npz",
    pb.DataFile.SAFETENSORS: ".safetensors",
    pb.DataFile.TORCH_SAVE: ".pt",
}
# The suffixes of the tensor files a client may upload (lowercase), and the proto format of each.
DATA_SUFFIXES: dict[str, int] = {suffix: format for format, suffix in DATA_FORMATS.items()} | {
    ".pth": pb.DataFile.TORCH_SAVE
}


def model_format(kind: FileKind) -> int:
    """The proto's ModelFile.Format of a model file of this kind (`convert.files.file_kind`)."""
    return next(format for format, name in MODEL_FORMATS.items() if name == kind)


def weights_format(kind: str) -> int:
    """The proto's Factory.WeightsFormat of a weights file of this kind (`convert.files.weights_kind`)."""
    return next(format for format, name in WEIGHTS_FORMATS.items() if name == kind)
