"""Export any nn.Module to ONNX, and check ONNX Runtime against PyTorch on it (`convert.runtime.parity`).

The dynamo exporter (`torch.onnx.export(dynamo=True)`) first; the TorchScript-based exporter when it fails,
with a note saying so. The batch dimension is dynamic by default. Every export is checked with onnx.checker
and then run on ONNX Runtime's CPU provider against PyTorch, on the example input and on a batch of another
size.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import _get_all_tensors
from torch import nn

from convert.artifacts import CONVERTED_ONNX, ORIGINAL_ONNX
from convert.common import Progress, as_inputs, no_progress
from convert.conversion import Conversion
from convert.errors import ConvertError, ParityError, one_line
from convert.report.schema import OnnxExport, OnnxReport
from convert.runtime.parity import DEFAULT_ATOL, check_parity, parity_message, with_batch
from convert.surgery.verify import run_model, tensors_of

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "TRACE_BATCH",
    "OnnxConfig",
    "export_conversion",
    "export_onnx",
    "quiet_unless_verbose",
]

logger = logging.getLogger(__name__)
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, less room for the graph itself
TRACE_BATCH = 2  # the dynamo exporter traces at this batch size: a batch of 1 would be specialized to a constant


@dataclasses.dataclass(frozen=True)
class OnnxConfig:
    """How to export and how close ONNX Runtime must come to PyTorch."""

    opset: int | None = None  # ONNX opset; None for the exporter's default
    dynamic_batch: bool = True  # dim 0 of every input and output symbolic; False fixes all shapes
    atol: float = DEFAULT_ATOL  # parity tolerance, relative to max |PyTorch| of each output

    def __post_init__(self) -> None:
        if self.opset is not None and self.opset < 7:
            raise ConvertError(f"opset {self.opset} is not valid: use 7 or more (e.g. `opset`=18), or omit it")
        if not self.atol > 0:
            raise ConvertError(f"atol {self.atol} is not valid: use a positive tolerance, e.g. 1e-4")


def export_onnx(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    path: str | os.PathLike[str],
    config: OnnxConfig | None = None,
    *,
    strict: bool = True,
) -> OnnxExport:
    """Export `model` in eval mode to `path`, then check it with onnx.checker and ONNX Runtime.

    The caller's model is not changed (a deep copy is exported). Models over 2 GB keep their weights in a
    `<file>.data` file next to `path`.

    Args:
        model: any nn.Module taking positional tensors; dim 0 of each input is the batch.
        example_inputs: one tensor or a sequence of positional input tensors.
        path: the .onnx file to write.
        config: opset, dynamic batch and parity tolerance.
        strict: raise ParityError when the check fails; False records the failure in the result only.

    Returns:
        OnnxExport with the exporter used, the opset and the parity figures (`passed`).

    Raises:
        ConvertError: when both exporters fail.
        ParityError: (strict only) when ONNX Runtime differs from PyTorch by more than `config.atol`.

    Example:
        >>> export = export_onnx(torchvision.models.resnet18(), torch.randn(1, 3, 224, 224), "resnet18.onnx")
        >>> export.exporter, export.parity[0].max_rel < 1e-4
        ('dynamo', True)
    """
    config = config or OnnxConfig()
    path = Path(path)
    inputs = as_inputs(example_inputs)
    model = copy.deepcopy(model).eval()
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    notes: list[str] = []
    try:
        with quiet_unless_verbose():
            _export_dynamo(model, inputs, path, config, external)
        exporter = "dynamo"
    except Exception as e:  # noqa: BLE001 - any failure means "try the other exporter"
        cause = _plain(one_line(e.__cause__ or e))  # the exporter's own error wraps torch.export's
        notes.append(f"the dynamo exporter failed ({cause}); used the TorchScript-based exporter")
        logger.warning(notes[-1])
        try:
            _export_torchscript(model, inputs, path, config, external)
        except Exception as e2:  # both failed: the user's model is not exportable
            raise ConvertError(
                f"ONNX export of {path.name} failed with both exporters (dynamo: {cause}; "
                f"TorchScript: {one_line(e2)}): rerun with INFO logging for the details"
            ) from e2
        exporter = "torchscript"
    proto = onnx.load(path, load_external_data=False)
    export = OnnxExport(
        path=str(path),
        exporter=exporter,
        opset=next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0),
        dynamic_batch=config.dynamic_batch,
        external_data=any(t.data_location == onnx.TensorProto.EXTERNAL for t in _initializers(proto)),
        notes=notes,
    )
    check_parity(model, export, inputs, config.atol)
    if strict and not export.passed:
        raise ParityError(parity_message([export], config.atol))
    return export


@contextlib.contextmanager
def quiet_unless_verbose() -> Iterator[None]:
    """Silence the logs of a library whose failures and advice become our notes (torch's when the dynamo exporter
    fails, which the TorchScript-based exporter then replaces; ONNX Runtime's quantization tools). Logging at INFO
    (the CLI's --verbose) keeps them."""
    if logger.isEnabledFor(logging.INFO):
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # the exporter colours its messages


def _export_dynamo(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, config: OnnxConfig, external: bool
) -> None:
    dynamic_shapes = None
    if config.dynamic_batch:
        batch = torch.export.Dim("batch")
        dynamic_shapes = tuple({0: batch} for _ in inputs)
        inputs = with_batch(inputs, TRACE_BATCH)
    # the exporter prints its progress on stdout, which belongs to the CLI's --json
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model, inputs, dynamo=True, opset_version=config.opset, dynamic_shapes=dynamic_shapes, verbose=False
        )
        program.save(path, external_data=external or None)  # None: external data when over 2 GB


def _export_torchscript(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, config: OnnxConfig, external: bool
) -> None:
    names = [f"input_{i}" for i in range(len(inputs))]
    outputs = [f"output_{i}" for i in range(len(tensors_of(run_model(model, inputs))))]
    axes = {name: {0: "batch"} for name in names + outputs} if config.dynamic_batch else None
    with _private_folder(path) as folder, contextlib.redirect_stdout(io.StringIO()):
        # in a folder of its own: over 2 GB this exporter writes one file per weight, named after the weight,
        # which would collide with another model's in the same folder
        torch.onnx.export(
            model,
            inputs,
            str(folder / path.name),
            dynamo=False,
            opset_version=config.opset,
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
        )
        proto = onnx.load(folder / path.name, load_external_data=True)
        onnx.save_model(
            proto,
            path,
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
        )


@contextlib.contextmanager
def _private_folder(path: Path) -> Iterator[Path]:
    folder = path.parent / f".{path.name}.export-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _initializers(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    return list(_get_all_tensors(proto))


def export_conversion(
    conversion: Conversion,
    folder: str | os.PathLike[str],
    config: OnnxConfig | None = None,
    progress: Progress | None = None,
) -> OnnxReport:
    """Export the original and the converted model into `folder` (original.onnx, model.onnx), check both against
    PyTorch, and record it as `conversion.report.onnx`. A failed check is recorded (`passed`), not raised:
    `parity_message` says what failed."""
    config = config or OnnxConfig()
    notify = progress or no_progress
    exports = []
    models = ((conversion.original, ORIGINAL_ONNX), (conversion.model, CONVERTED_ONNX))
    for index, (model, name) in enumerate(models):
        notify(f"exporting and checking {name}", index / len(models))
        export = export_onnx(model, conversion.inputs, Path(folder) / name, config, strict=False)
        export.path = name  # relative to the folder
        exports.append(export)
    conversion.report.onnx = OnnxReport(config.atol, *exports)
    return conversion.report.onnx
