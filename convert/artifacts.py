"""The files of an output folder (one table), and writing them: atomically, into a temporary sibling folder that
is renamed into place. A run whose results fail a check (ONNX parity) is kept in `OUTDIR.failed-parity` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

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
    "CONVERTED_ONNX",
    "DISTILL_CHECKPOINT",
    "DISTILL_PLOT",
    "failed_parity_dir",
    "FAILED_PARITY_SUFFIX",
    "FILES",
    "keep_failed",
    "MODEL",
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
    Artifact(MODEL, "the converted model (torch.save of the module)", lambda r: True),
    Artifact(WEIGHTS, "the converted state dict (safetensors: no code)", lambda r: True),
    Artifact(PLAN, "the converted layers and their forms, for apply_plan on a freshly built original", lambda r: True),
    Artifact(REPORT_JSON, "the report, machine-readable", lambda r: True),
    Artifact(REPORT_MD, "the report, for people", lambda r: True),
    Artifact(ORIGINAL_ONNX, "the original model in ONNX", lambda r: r.onnx is not None),
    Artifact(CONVERTED_ONNX, "the converted model in ONNX", lambda r: r.onnx is not None),
    Artifact(BENCHMARK_PLOT, "latency per batch size, original vs converted", lambda r: r.benchmark is not None),
    Artifact(AUTO_PLOT, "the latency-aware plan's error/latency trade-off", lambda r: r.auto is not None),
    Artifact(DISTILL_PLOT, "the distillation's loss curve", lambda r: r.distill is not None),
    Artifact(DISTILL_CHECKPOINT, "the distillation's state, to resume it", lambda r: r.distill is not None),
)


def output_files(report: Report) -> list[str]:
    """The files a run with `report` wrote into its output folder, relative to it."""
    return [artifact.name for artifact in FILES if artifact.written(report)]


def check_outdir(outdir: str | os.PathLike[str]) -> None:
    """Refuse an `outdir` whose replacement could lose the user's files: only a new folder, an empty one, or
    the results of an earlier run (a folder with report.json) are replaced.

    Raises:
        ConvertError: when `outdir` is a file, or a folder with files but no report.json (e.g. `-o src`).
    """
    target = Path(outdir)
    if target.name in ("", ".", ".."):
        raise ConvertError(f"output folder {str(outdir)!r} is not valid: name a new folder, e.g. -o out")
    if target.exists() and not target.is_dir():
        raise ConvertError(f"{target} exists and is not a folder: give -o a new folder (it is created)")
    if target.is_dir() and any(target.iterdir()) and not (target / REPORT_JSON).is_file():
        raise ConvertError(
            f"{target} is a folder with other files (no report.json from an earlier run), which would be replaced: "
            "give -o a new folder, or remove it first"
        )


@contextlib.contextmanager
def atomic_dir(outdir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `outdir`, on failure it is removed.

    A failure leaves `outdir` as it was (absent, or the previous results).

    Raises:
        ConvertError: from `check_outdir`, before anything is written.
    """
    check_outdir(outdir)
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
    """Where the files of a run whose ONNX parity check failed are kept: `OUTDIR.failed-parity`."""
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
    that stages wrote there before (the ONNX files) stay."""
    report = conversion.report
    torch.save(conversion.model, folder / MODEL)
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


def save_result(conversion: Conversion, outdir: str | os.PathLike[str]) -> Path:
    """Write `conversion` into `outdir` (see `write_conversion`), replacing it as a whole, never half-written.

    Exporting and benchmarking are stages of their own (`export_conversion`, `benchmark_conversion`, or
    `convert.job.run_job` for all of them in order).

    Raises:
        ConvertError: when `outdir` is not a place for results (`check_outdir`) or cannot be written
            (permissions, a full disk); `outdir` is then as it was.
    """
    with atomic_dir(outdir) as staging:
        write_conversion(conversion, staging)
    return Path(outdir)
