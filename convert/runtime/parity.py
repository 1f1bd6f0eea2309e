"""ONNX Runtime against PyTorch on an exported model: onnx.checker, then both run on the same inputs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from convert.common import as_inputs
from convert.errors import ConvertError, one_line
from convert.report.schema import OnnxExport, Parity
from convert.runtime.sessions import open_session
from convert.surgery.verify import run_model, tensors_of

__all__ = ["DEFAULT_ATOL", "check_parity", "differences", "parity_message", "with_batch"]

DEFAULT_ATOL = 1e-4  # max |ORT - PyTorch| allowed, relative to max |PyTorch| of each output


def check_parity(
    model: nn.Module,
    export: OnnxExport,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    atol: float = DEFAULT_ATOL,
) -> OnnxExport:
    """Check `export` with onnx.checker, then run it on ONNX Runtime (CPU) and `model` in eval mode on the
    example input and, with a dynamic batch, on a batch of another size. Fills `export.parity` and
    `export.passed` (a failure is recorded, not raised).

    Args:
        model: the model that was exported.
        export: from `export_onnx`; its `path` is read.
        example_inputs: one tensor or a sequence of positional input tensors.
        atol: the largest difference allowed, relative to max |PyTorch| of each output.

    Returns:
        `export`, with `parity` and `passed` filled in.

    Raises:
        ConvertError: for bfloat16 inputs (numpy cannot hold them).
    """
    inputs = as_inputs(example_inputs)
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
        batches.append(with_batch(inputs, 3 if inputs[0].shape[0] != 3 else 2))
    names = [i.name for i in session.get_inputs()]
    for batch in batches:
        size = int(batch[0].shape[0])
        try:
            expected = [t.detach().cpu().float().numpy() for t in tensors_of(run_model(model, batch))]
        except Exception as e:  # noqa: BLE001 - the model itself fixes its batch size
            error = (
                f"batch {size}: PyTorch rejects it ({one_line(e)}); if the model fixes its batch, "
                "use `dynamic_batch`=False"
            )
            export.parity.append(Parity(size, None, None, error))
            continue
        feeds = dict(zip(names, map(_numpy, batch), strict=False))
        try:
            if len(names) != len(batch):
                raise ValueError(f"the ONNX model takes {len(names)} inputs, PyTorch {len(batch)}")
            max_abs, max_rel = differences(expected, session.run(None, feeds))
        except Exception as e:  # noqa: BLE001 - ORT's failure on this batch is the parity failure
            export.parity.append(Parity(size, None, None, f"batch {size}: ONNX Runtime failed ({one_line(e)})"))
        else:
            export.parity.append(Parity(size, max_abs, max_rel))
    export.passed = all(p.error is None and p.max_rel <= atol for p in export.parity)
    return export


def differences(expected: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
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
    return f"ONNX Runtime does not match PyTorch within `atol`={atol:g}: {'; '.join(problems)}"


def with_batch(inputs: tuple[torch.Tensor, ...], batch: int) -> tuple[torch.Tensor, ...]:
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


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        raise ConvertError("ONNX Runtime's check needs inputs that numpy holds: use `input_dtype`=float32")
    return t.detach().cpu().numpy()
