"""Factories the service tests put on the server's allowlist (`--allow-factory 'service_models:*'`)."""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import torch
from torch import nn


def tiny() -> nn.Module:
    """Two small convs: converts in well under a second."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))


def slow() -> nn.Module:
    """Writes its process id to `pid` in the job's folder (the worker's cwd), then takes a minute to build."""
    Path("pid").write_text(str(os.getpid()))
    time.sleep(60)
    return tiny()


def segfault() -> nn.Module:
    """Crashes the worker process (SIGSEGV), as a buggy native extension would."""
    ctypes.string_at(0)
    return tiny()


def hog() -> nn.Module:
    """Asks for 8 GiB at once: more than the test server's worker memory limit."""
    torch.empty(8 << 30, dtype=torch.uint8)
    return tiny()


def mixed() -> nn.Module:
    """A standard conv, a grouped one and a transposed one: what `include_grouped` and `transposed` choose among."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ConvTranspose2d(8, 4, 2, stride=2)
    )
