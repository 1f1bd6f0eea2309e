"""The files of an output folder (one table), and writing them: atomically, into a temporary sibling folder that
is renamed into place. A run whose results fail a check (ONNX parity, INT8 accuracy) is kept in `OUTDIR.failed-parity`
instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from convert.conversion import Conversion
from convert.errors import ConvertError, one_line
from convert.report import Report, plot_auto, plot_benchmark, plot_distill

__all__ = [
    "Artifact",
    "atomic_dir",
    "AUTO_PLOT",
    "BENCHMARK_PLOT",
    "check_outdir",
    "CONVERTED_INT8_ONNX",
    "CONVERTED_ONNX",
    "DISTILL_CHECKPOINT",
    "DISTILL_PLOT",
    "failed_parity_dir",
    "FAILED_PARITY_SUFFIX",
    "FILES",
    "keep_failed",
    "MODEL",
    "ORIGINAL_INT8_ONNX",
    "ORIGINAL_ONNX",
    "output_files",
    "REPORT_JSON",
    "REPORT_MD",
    "save_result",
    "write_conversion",
    "write_report",
]

MODEL = "model.pt"
WEIGHTS = "model.safetensors"  # the converted state dict: loads without unpickling (with PLAN and apply_plan)
PLAN = "plan.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ORIGINAL_ONNX = "original.onnx"
CONVERTED_ONNX = "model.onnx"
ORIGINAL_INT8_ONNX = "original.int8.onnx"
CONVERTED_INT8_ONNX = "model.int8.onnx"
BENCHMARK_PLOT = "benchmark.png"
AUTO_PLOT = "auto.png"
DISTILL_PLOT = "distill.png"
DISTILL_CHECKPOINT = "distill-checkpoint.pt"  # what a resumed distillation reads
FAILED_PARITY_SUFFIX = ".failed-parity"


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One file of OUTDIR."""

    name: str
    what: str  # one line, for listings and the service's artifact descriptions
    written: Callable[[Report], bool]  # whether a run with this report writes it


# Every file a run can write into OUTDIR, in the order they are listed.
FILES: tuple[Artifact, ...] = (
    Artifact(MODEL, "the converted model (torch.save of the module)", lambda r: r.model_pt_skipped is None),
    Artifact(WEIGHTS, "the converted state dict (safetensors: no code)", lambda r: True),
    Artifact(PLAN, "the converted layers and their forms, for apply_plan on a freshly built original", lambda r: True),
    Artifact(REPORT_JSON, "the report, machine-readable", lambda r: True),
    Artifact(REPORT_MD, "the report, for people", lambda r: True),
    Artifact(ORIGINAL_ONNX, "the original model in ONNX", lambda r: r.onnx is not None),
    Artifact(CONVERTED_ONNX, "the converted model in ONNX", lambda r: r.onnx is not None),
    Artifact(ORIGINAL_INT8_ONNX, "the original model in ONNX, INT8", lambda r: r.quantize is not None),
    Artifact(CONVERTED_INT8_ONNX, "the converted model in ONNX, INT8", lambda r: r.quantize is not None),
    Artifact(BENCHMARK_PLOT, "latency per batch size, original vs converted", lambda r: r.benchmark is not None),
    Artifact(AUTO_PLOT, "the latency-aware plan's error/latency trade-off", lambda r: r.auto is not None),
    Artifact(DISTILL_PLOT, "the distillation's loss curve", lambda r: r.distill is not None),
    Artifact(DISTILL_CHECKPOINT, "the distillation's state, to resume it", lambda r: r.distill is not None),
)


def output_files(report: Report) -> list[str]:
    """The files a run with `report` wrote into its output folder, relative to it."""
    return [artifact.name for artifact in FILES if artifact.written(report)]


def check_outdir(outdir: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Refuse an `outdir` whose replacement could lose the user's files: only a new folder, an empty one, or
    (with `overwrite`) the results of an earlier run (a folder with report.json) are replaced.

    Raises:
        ConvertError: when `outdir` is a file, a folder with files but no report.json (e.g. `-o src`), or the
            results of an earlier run without `overwrite`.
    """
    target = Path(outdir)
    if target.name in ("", ".", ".."):
        raise ConvertError(f"output folder {str(outdir)!r} is not valid: name a new folder, e.g. -o out")
    if target.exists() and not target.is_dir():
        raise ConvertError(f"{target} exists and is not a folder: give -o a new folder (it is created)")
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not (target / REPORT_JSON).is_file():
        raise ConvertError(
            f"{target} is a folder with other files (no report.json from an earlier run), which would be replaced: "
            "give -o a new folder, or remove it first"
        )
    if not overwrite:
        raise ConvertError(
            f"{target} holds the results of an earlier run: pass `overwrite`=True to replace them, "
            "or give another `outdir`"
        )


@contextlib.contextmanager
def atomic_dir(outdir: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `outdir`, on failure it is removed.

    A failure leaves `outdir` as it was (absent, or the previous results). `overwrite`: see `check_outdir`.

    Raises:
        ConvertError: from `check_outdir`, before anything is written.
    """
    check_outdir(outdir, overwrite)
    target = Path(outdir)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvertError(f"cannot create {target.parent} ({one_line(e)}): check the path and its permissions") from e
    # mkdir, not mkdtemp: the folder becomes `outdir`, so it gets the umask's permissions rather than 0700
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        staging.mkdir()
        try:
            yield staging
            _replace_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:  # the file system's refusal, not a bug
        raise ConvertError(
            f"cannot write {outdir} ({one_line(e)}): check that its folder is writable and has free space"
        ) from e


def _replace_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target`, replacing `target` (and its content) if it exists."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
        try:
            os.replace(source, target)
        except BaseException:
            os.replace(old / target.name, target)  # put the earlier results back
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def failed_parity_dir(outdir: str | os.PathLike[str]) -> Path:
    """Where the files of a run whose ONNX parity (or INT8 accuracy) check failed are kept: `OUTDIR.failed-parity`."""
    target = Path(outdir)
    return target.with_name(f"{target.name}{FAILED_PARITY_SUFFIX}")


def keep_failed(staging: Path, outdir: str | os.PathLike[str]) -> Path:
    """Rename a staging folder whose results failed a check to `failed_parity_dir(outdir)`, for inspection."""
    failed = failed_parity_dir(outdir)
    _replace_dir(staging, failed)
    return failed


def write_conversion(conversion: Conversion, folder: Path) -> None:
    """Write `conversion` into `folder`: model.pt, model.safetensors, plan.json, report.json, report.md, and what
    its report calls for (the plots of its benchmark, plan and distillation; the distillation checkpoint). Files
    that stages wrote there before (the ONNX files) stay.

    A model that does not pickle (weight_norm's parametrizations, a hook that is a local function: the user's model
    did not pickle either) gets no model.pt: the report's `model_pt_skipped` says why, and plan.json with
    model.safetensors load it."""
    report = conversion.report
    report.model_pt_skipped = _save_module(conversion.model, folder / MODEL)
    save_file(_own_storage(conversion.model.state_dict()), folder / WEIGHTS)
    (folder / PLAN).write_text(json.dumps(conversion.plan(), indent=2) + "\n")
    if conversion.checkpoint is not None:
        torch.save(conversion.checkpoint, folder / DISTILL_CHECKPOINT)
    if report.distill is not None:
        plot_distill(report.distill, folder / DISTILL_PLOT)
    if report.benchmark is not None:
        plot_benchmark(report.benchmark, folder / BENCHMARK_PLOT)
    if report.auto is not None:
        plot_auto(report.auto, folder / AUTO_PLOT)
    write_report(report, folder)


def _save_module(model: torch.nn.Module, path: Path) -> str | None:
    """torch.save `model` to `path` when it pickles, and return None; else write nothing and return why."""
    refusal = _pickle_refusal(model)
    if refusal is None:
        torch.save(model, path)
    return refusal


class _Probe(pickle.Pickler):
    """A pickler that writes nothing and leaves tensors' storages out: it walks what torch.save would pickle."""

    def persistent_id(self, obj: object) -> object:
        # torch.save writes storages beside the pickle; here they are named only, so no tensor data is copied
        return id(obj) if isinstance(obj, torch.storage.UntypedStorage | torch.storage.TypedStorage) else None


def _pickle_refusal(model: torch.nn.Module) -> str | None:
    """Why pickle refuses `model` (one line), or None. Checked before torch.save, so that a refusal writes nothing
    and an I/O failure of torch.save is never taken for one."""
    try:
        _Probe(_Discard(), protocol=torch.serialization.DEFAULT_PROTOCOL).dump(model)  # as torch.save
    # what pickling raises for an object it cannot write: parametrize's RuntimeError, PicklingError, "Can't pickle
    # local object" (AttributeError), "cannot pickle '...' object" (TypeError)
    except (RuntimeError, pickle.PicklingError, AttributeError, TypeError) as e:
        return one_line(e).removesuffix(" See:")  # parametrize's first line ends so, before a link
    return None


class _Discard(io.RawIOBase):
    """A file that takes every byte and keeps none."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return len(data)


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each tensor contiguous and in storage of its own (safetensors refuses shared storage,
    e.g. tied weights: each key gets its copy, and `load_state_dict` fills both)."""
    seen: set[int] = set()
    own = {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        pointer = tensor.untyped_storage().data_ptr()
        own[key] = tensor.clone().contiguous() if pointer in seen or not tensor.is_contiguous() else tensor
        seen.add(pointer)
    return own


def write_report(report: Report, folder: Path) -> None:
    (folder / REPORT_JSON).write_text(report.to_json() + "\n")
    (folder / REPORT_MD).write_text(report.to_markdown())


def save_result(conversion: Conversion, outdir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write `conversion` into `outdir` (see `write_conversion`), as a whole, never half-written; the results of
    an earlier run there are replaced only with `overwrite`.

    Exporting and benchmarking are stages of their own (`export_conversion`, `benchmark_conversion`, or
    `convert.job.run_job` for all of them in order).

    Raises:
        ConvertError: when `outdir` is not a place for results (`check_outdir`) or cannot be written
            (permissions, a full disk); `outdir` is then as it was.
    """
    with atomic_dir(outdir, overwrite) as staging:
        write_conversion(conversion, staging)
    return Path(outdir)
