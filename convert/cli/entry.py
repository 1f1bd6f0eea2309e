"""The `convert` executable's entry point: `main`'s exit status as the process's, and a Ctrl-C that ends it at once."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from convert.errors import INTERRUPTED  # light: no torch

__all__ = ["run"]


def run() -> NoReturn:
    """Run `convert` with the process's arguments (the console script, and `python -m convert.cli`).

    On Ctrl-C the process ends as soon as its one line is printed and the partial output removed (the exceptions'
    unwinding does that): `os._exit` skips the interpreter's teardown, which with torch and ONNX Runtime loaded
    takes seconds (their thread pools and finalizers). A Ctrl-C while those load (seconds too) gets the same line.
    """
    try:
        from convert.cli.commands import main  # torch and ONNX Runtime load here

        status = main()
    except KeyboardInterrupt:
        sys.stderr.write(f"{INTERRUPTED.label}: nothing was written\n")
        status = INTERRUPTED.exit_code
    if status == INTERRUPTED.exit_code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
