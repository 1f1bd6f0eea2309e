"""The GPU check's report (benchmarks/gpu_check.py): its rows, each printed as it comes and written with the figures
behind them to --json at once (a run cut short keeps what it measured), and the table of them at the end."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision

__all__ = ["Check", "Row", "environment"]


@dataclasses.dataclass
class Row:
    section: str
    check: str
    result: str
    status: str  # ok | FAIL | SLOWER | skipped


class Check:
    """The rows so far and the figures behind them, written to --json after every row."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rows, self.start = args, [], time.monotonic()
        self.details: dict[str, dict] = {"benchmarks": {}, "auto": {}, "pytest": {}}
        self.environment = environment(args.device)

    def add(self, section: str, check: str, result: str, status: str = "ok") -> None:
        self.rows.append(Row(section, check, result, status))
        print(f"[{time.monotonic() - self.start:6.1f}s] {status:7s} {section}: {check}: {result}", flush=True)
        self.save()

    def step(self, section: str, name: str, cost: float, run: Callable[[], None]) -> bool:
        """Run one step of `section`, unless it was not asked for or would overrun the time limit; a failure
        becomes a FAIL row (with its traceback on stderr), and the next steps go on."""
        if section not in self.args.sections:
            return False
        left = self.args.time_limit - (time.monotonic() - self.start)
        if left < cost:
            self.add(
                section, name, f"skipped: {left:.0f} s of --time-limit left, the step needs ~{cost:.0f} s", "skipped"
            )
            return False
        try:
            run()
            return True
        except Exception as e:  # noqa: BLE001 - the check goes on, and says what failed
            traceback.print_exc()
            self.add(
                section, name, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", "FAIL"
            )
            return False

    def save(self) -> None:
        if self.args.json is None:
            return
        document = {
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "seconds": round(time.monotonic() - self.start, 1),
            "environment": self.environment,
            "rows": [dataclasses.asdict(row) for row in self.rows],
            **self.details,
        }
        Path(self.args.json).write_text(json.dumps(document, indent=2))

    def table(self) -> str:
        """The rows as aligned text: status, section, check, result."""
        header = Row("section", "check", "result", "status")
        cells = [(row.status, row.section, row.check, row.result) for row in [header, *self.rows]]
        widths = [max(len(cell[i]) for cell in cells) for i in range(3)]
        return "\n".join(
            "  ".join([*(c.ljust(w) for c, w in zip(cell[:3], widths, strict=True)), cell[3]]) for cell in cells
        )


def environment(device: str) -> dict[str, str]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if device == "cuda":
        env |= {"gpu": torch.cuda.get_device_name(), "cuda": str(torch.version.cuda)}
        env |= {"cudnn": str(torch.backends.cudnn.version()), "driver": _driver()}
    return env


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        return out.stdout.strip() or "?"
    except OSError:
        return "?"
