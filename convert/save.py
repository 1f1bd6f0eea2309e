"""Write results atomically: everything goes to a temporary sibling folder that is renamed into place.

With ONNX export, a failed parity check renames that folder to `OUTDIR.failed-parity` instead, for inspection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from convert.bench import BenchConfig, Progress, benchmark_onnx, resolve_device
from convert.errors import ConvertError, one_line
from convert.onnx_export import OnnxConfig, ParityError, export_onnx, parity_message
from convert.pipeline import ConversionResult
from convert.report import OnnxReport, Report, plot_auto, plot_benchmark, plot_distill

DISTILL_CHECKPOINT = "distill-checkpoint.pt"  # what --resume reads
DISTILL_PLOT = "distill.png"
ORIGINAL_ONNX = "original.onnx"
CONVERTED_ONNX = "model.onnx"
FAILED_PARITY_SUFFIX = ".failed-parity"


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
    if target.is_dir() and any(target.iterdir()) and not (target / "report.json").is_file():
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
    target.parent.mkdir(parents=True, exist_ok=True)
    # mkdir, not mkdtemp: the folder becomes `outdir`, so it gets the umask's permissions rather than 0700
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def check_save_options(
    outdir: str | os.PathLike[str],
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
    onnx: OnnxConfig | None = None,
    benchmark: BenchConfig | None = None,
) -> None:
    """Everything `save_result` would refuse that is known before converting: the output folders, batch sizes
    that static shapes rule out, and a device that cannot run here.

    Raises:
        ConvertError: naming the option to change.
    """
    check_outdir(outdir)
    if onnx is None and benchmark is None:
        return
    check_outdir(failed_parity_dir(outdir))
    if benchmark is None:
        return
    resolve_device(benchmark.device)
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs or ())
    if onnx is not None and not onnx.dynamic_batch and inputs:
        batch = int(inputs[0].shape[0])
        if set(benchmark.batch_sizes) != {batch}:
            raise ConvertError(
                f"--static-shapes fixes the batch at {batch} (the example input's), so batch sizes "
                f"{','.join(map(str, benchmark.batch_sizes))} cannot run: use --batch-sizes {batch}, "
                "or drop --static-shapes"
            )


def save_result(
    result: ConversionResult,
    outdir: str | os.PathLike[str],
    *,
    original: nn.Module | None = None,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
    onnx: OnnxConfig | None = None,
    benchmark: BenchConfig | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write model.pt (torch.save of the converted module), report.json and report.md into `outdir`.

    After distillation, also distill.png (the loss curve) and distill-checkpoint.pt (for a resume).

    With `onnx` (or `benchmark`), also original.onnx and model.onnx, each checked with onnx.checker and
    ONNX Runtime against PyTorch (`report.onnx`). With `benchmark`, the two are timed side by side on ONNX
    Runtime (`report.benchmark`, a table in report.md, benchmark.png). The report of `result` is updated.

    Args:
        result: from `convert_model`.
        outdir: the folder to write; replaced as a whole, never left half-written.
        original: the model that was converted (needed for `onnx` and `benchmark`).
        example_inputs: the inputs it was converted with (needed for `onnx` and `benchmark`).
        onnx: export options and parity tolerance.
        benchmark: benchmark options (implies `onnx`, with its defaults when None).
        progress: called with (what is running, fraction done) while exporting and timing.

    Raises:
        ConvertError: when `outdir` is not a place for results (`check_outdir`) or cannot be written
            (permissions, a full disk); `outdir` is then as it was.
        ParityError: when ONNX Runtime does not match PyTorch; the files are kept in `failed_parity_dir(outdir)`
            and `outdir` is as it was.
    """
    if benchmark is not None and onnx is None:
        onnx = OnnxConfig()
    if onnx is not None and (original is None or example_inputs is None):
        raise TypeError("save_result needs `original` and `example_inputs` to export ONNX or benchmark")
    check_save_options(outdir, example_inputs, onnx, benchmark)
    notify = progress or (lambda _what, _fraction: None)
    report = result.report
    try:
        with atomic_dir(outdir) as staging:
            torch.save(result.model, staging / "model.pt")
            if result.checkpoint is not None:
                torch.save(result.checkpoint, staging / DISTILL_CHECKPOINT)
            if report.distill is not None:
                plot_distill(report.distill, staging / DISTILL_PLOT)
            if onnx is not None:
                report.onnx = _export_both(result, original, example_inputs, staging, onnx, notify)
                exports = [report.onnx.original, report.onnx.converted]
                if not all(export.passed for export in exports):
                    _write_report(report, staging)
                    failed = failed_parity_dir(outdir)
                    _replace_dir(staging, failed)
                    raise ParityError(f"{parity_message(exports, onnx.atol)}; the files are kept in {failed}/")
            if benchmark is not None:
                totals = report.totals
                report.benchmark = benchmark_onnx(
                    [staging / ORIGINAL_ONNX, staging / CONVERTED_ONNX],
                    benchmark,
                    names=["original", "converted"],
                    macs=[totals.macs_before, totals.macs_after],
                    progress=notify,
                )
                for timing in report.benchmark.models:
                    timing.path = Path(timing.path).name  # relative to outdir
                plot_benchmark(report.benchmark, staging / "benchmark.png")
            if report.auto is not None:
                plot_auto(report.auto, staging / "auto.png")
            _write_report(report, staging)
    except OSError as e:  # the file system's refusal, not a bug
        raise ConvertError(
            f"cannot write {outdir} ({one_line(e)}): check that its folder is writable and has free space"
        ) from e
    return Path(outdir)


def _export_both(
    result: ConversionResult,
    original: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    folder: Path,
    config: OnnxConfig,
    notify: Progress,
) -> OnnxReport:
    """Export the original and the converted model into `folder` and check both (failures recorded, not raised)."""
    exports = []
    for index, (model, name) in enumerate(((original, ORIGINAL_ONNX), (result.model, CONVERTED_ONNX))):
        notify(f"exporting and checking {name}", index / 2)
        export = export_onnx(model, example_inputs, folder / name, config, strict=False)
        export.path = name  # relative to outdir
        exports.append(export)
    return OnnxReport(config.atol, *exports)


def _write_report(report: Report, folder: Path) -> None:
    (folder / "report.json").write_text(report.to_json() + "\n")
    (folder / "report.md").write_text(report.to_markdown())
