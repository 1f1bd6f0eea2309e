"""Write results atomically: everything goes to a temporary sibling folder that is renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from convert.errors import ConvertError, one_line
from convert.pipeline import ConversionResult


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
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old / target.name, target)  # put the earlier results back
                old.rmdir()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_result(result: ConversionResult, outdir: str | os.PathLike[str]) -> Path:
    """Write model.pt (torch.save of the converted module), report.json and report.md into `outdir`.

    Raises:
        ConvertError: when `outdir` is not a place for results (`check_outdir`) or cannot be written
            (permissions, a full disk); `outdir` is then as it was.
    """
    try:
        with atomic_dir(outdir) as staging:
            torch.save(result.model, staging / "model.pt")
            (staging / "report.json").write_text(result.report.to_json() + "\n")
            (staging / "report.md").write_text(result.report.to_markdown())
    except OSError as e:  # the file system's refusal, not a bug
        raise ConvertError(
            f"cannot write {outdir} ({one_line(e)}): check that its folder is writable and has free space"
        ) from e
    return Path(outdir)
