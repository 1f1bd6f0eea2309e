"""Export any nn.Module to ONNX and check ONNX Runtime against PyTorch on it.

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

import numpy as np
import onnx
import torch
from torch import nn

from convert.artifacts import CONVERTED_ONNX, ORIGINAL_ONNX
from convert.common import Progress, no_progress
from convert.conversion import Conversion
from convert.errors import ConvertError, ParityError, one_line
from convert.report.schema import OnnxExport, OnnxReport, Parity
from convert.surgery.verify import run_model, tensors_of

logger = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4  # max |ORT - PyTorch| allowed, relative to max |PyTorch| of each output
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
            raise ConvertError(f"opset {self.opset} is not valid: use 7 or more (e.g. --opset 18), or omit it")
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
    inputs = _as_tuple(example_inputs)
    model = copy.deepcopy(model).eval()
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    notes: list[str] = []
    try:
        with _quiet_unless_verbose():
            _export_dynamo(model, inputs, path, config, external)
        exporter = "dynamo"
    except Exception as e:  # noqa: BLE001 - any failure means "try the other exporter"
        cause = _plain(one_line(e.__cause__ or e))  # the exporter's own error wraps torch.export's
        notes.append(f"the dynamo exporter failed ({cause}); used the TorchScript-based exporter")
        logger.warning(notes[-1])
        try:
            _export_torchscript(model, inputs, path, config, external)
        except Exception as e2:  # noqa: BLE001
            raise ConvertError(
                f"ONNX export of {path.name} failed with both exporters (dynamo: {cause}; "
                f"TorchScript: {one_line(e2)}): rerun with --verbose for details"
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
def _quiet_unless_verbose() -> Iterator[None]:
    """Silence the error logs torch writes when the dynamo exporter fails: the failure is a note, and the
    TorchScript-based exporter is tried next. Logging at INFO (the CLI's --verbose) keeps them."""
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
        inputs = _with_batch(inputs, TRACE_BATCH)
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


def check_parity(
    model: nn.Module,
    export: OnnxExport,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    atol: float = DEFAULT_ATOL,
) -> OnnxExport:
    """Check `export` with onnx.checker, then run it on ONNX Runtime (CPU) and `model` in eval mode on the
    example input and, with a dynamic batch, on a batch of another size. Fills `export.parity` and
    `export.passed` (a failure is recorded, not raised).
    """
    from convert.runtime.bench import open_session  # onnxruntime is only loaded where it is used

    inputs = _as_tuple(example_inputs)
    export.parity, export.passed = [], False
    try:
        onnx.checker.check_model(export.path)
    except Exception as e:  # noqa: BLE001 - an invalid file fails the check; it stays for inspection
        export.notes.append(f"onnx.checker rejects {Path(export.path).name}: {one_line(e)}")
        return export
    session = open_session(export.path, "cpu", threads=torch.get_num_threads()).session
    model = copy.deepcopy(model).eval()
    batches = [inputs]
    if export.dynamic_batch:
        batches.append(_with_batch(inputs, 3 if inputs[0].shape[0] != 3 else 2))
    names = [i.name for i in session.get_inputs()]
    for batch in batches:
        size = int(batch[0].shape[0])
        try:
            expected = [t.detach().cpu().float().numpy() for t in tensors_of(run_model(model, batch))]
        except Exception as e:  # noqa: BLE001 - the model itself fixes its batch size
            error = (
                f"batch {size}: PyTorch rejects it ({one_line(e)}); if the model fixes its batch, use --static-shapes"
            )
            export.parity.append(Parity(size, None, None, error))
            continue
        feeds = dict(zip(names, map(_numpy, batch), strict=False))
        try:
            if len(names) != len(batch):
                raise ValueError(f"the ONNX model takes {len(names)} inputs, PyTorch {len(batch)}")
            max_abs, max_rel = _differences(expected, session.run(None, feeds))
        except Exception as e:  # noqa: BLE001 - ORT's failure on this batch is the parity failure
            export.parity.append(Parity(size, None, None, f"batch {size}: ONNX Runtime failed ({one_line(e)})"))
        else:
            export.parity.append(Parity(size, max_abs, max_rel))
    export.passed = all(p.error is None and p.max_rel <= atol for p in export.parity)
    return export


def _differences(expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(max |got - expected|, the worst output's max |got - expected| / max |expected|).

    Raises:
        ValueError: when the outputs differ in number or shape, or in where they hold NaN or infinity.
    """
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected, strict=True)):
        raise ValueError(
            f"ONNX Runtime's output shapes {[list(a.shape) for a in got]} differ from PyTorch's "
            f"{[list(b.shape) for b in expected]}"
        )
    max_abs = max_rel = 0.0
    for ref, out in zip(expected, got, strict=True):
        if not ref.size:
            continue
        same = (out == ref) | (np.isnan(out) & np.isnan(ref))  # equal infinities and NaN in the same places
        with np.errstate(invalid="ignore"):  # inf - inf
            diff = float(np.max(np.where(same, 0.0, np.abs(out.astype(np.float64) - ref))))
        if not np.isfinite(diff):
            raise ValueError("ONNX Runtime and PyTorch differ in where their outputs are NaN or infinite")
        finite = np.abs(ref[np.isfinite(ref)])
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(float(finite.max()) if finite.size else 0.0, 1e-12))
    return max_abs, max_rel


def parity_message(exports: Sequence[OnnxExport], atol: float) -> str:
    """One line naming every failed check of `exports`."""
    problems = []
    for export in exports:
        name = Path(export.path).name
        problems += [note for note in export.notes if note.startswith("onnx.checker")]
        for p in export.parity:
            if p.error is not None:
                problems.append(f"{name}: {p.error}")
            elif p.max_rel > atol:
                problems.append(f"{name}: batch {p.batch} differs by {p.max_rel:.2g} relative")
    return f"ONNX Runtime does not match PyTorch within --atol {atol:g}: {'; '.join(problems)}"


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        raise ConvertError("ONNX Runtime's check needs inputs that numpy holds: use --input-dtype float32")
    return t.detach().cpu().numpy()


def _as_tuple(example_inputs: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def _initializers(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(proto))


def _with_batch(inputs: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
    """Inputs of `batch` items: fresh random values (seeded) for float tensors, the first item repeated for others."""
    generator = torch.Generator().manual_seed(batch)
    out = []
    for t in inputs:
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=generator).to(dtype=t.dtype, device=t.device))
        else:
            out.append(t[:1].expand(shape).clone())
    return tuple(out)


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
