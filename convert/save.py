"""Write results atomically: everything goes to a temporary sibling folder that is renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from convert.pipeline import ConversionResult


@contextlib.contextmanager
def atomic_dir(outdir: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `outdir`, on failure it is removed.

    A failure leaves `outdir` as it was (absent, or the previous results).
    """
    target = Path(outdir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_result(result: ConversionResult, outdir: str | os.PathLike[str]) -> Path:
    """Write model.pt (torch.save of the converted module), report.json and report.md into `outdir`."""
    with atomic_dir(outdir) as staging:
        torch.save(result.model, staging / "model.pt")
        (staging / "report.json").write_text(result.report.to_json() + "\n")
        (staging / "report.md").write_text(result.report.to_markdown())
    return Path(outdir)
