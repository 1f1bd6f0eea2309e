"""Ctrl-C during `convert --to auto`, through the real CLI with stderr on a terminal (a pty): the progress shows an
ETA, and SIGINT ends the run at once with one line, exit status 130, and nothing written."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from test_cli import COMMAND

MODEL = textwrap.dedent(
    """
    from torch import nn


    def build():
        return nn.Sequential(*[nn.Conv2d(16 if i else 3, 16, 3, padding=1) for i in range(4)])
    """
)
_ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\r")
EXIT_BOUND_S = 10.0  # generous for a loaded test machine (it took ~7 s before: the interpreter's teardown)


def _read(fd: int, until: float) -> bytes:
    """What the pty holds now (waiting until `until` for the first bytes); b"" at its end."""
    ready, _, _ = select.select([fd], [], [], max(0.0, until - time.monotonic()))
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child closed its side
        return b""


def test_ctrl_c_during_the_auto_search_exits_at_once_and_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.py").write_text(MODEL)
    args = ["tiny:build", "--input-shape", "1,3,32,32", "--to", "auto", "--device", "cpu", "--threads", "1"]
    args += ["--cache-dir", str(tmp_path / "cache"), "-o", "out"]
    primary, secondary = pty.openpty()
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "160"}
    proc = subprocess.Popen(
        [*COMMAND, *args], cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary
    )
    os.close(secondary)
    try:
        seen, deadline = b"", time.monotonic() + 600
        while not (b"ETA" in seen and re.search(rb"timing \w+|measuring errors", seen)):
            assert proc.poll() is None and time.monotonic() < deadline, _ESCAPES.sub(b"", seen).decode()[-2000:]
            seen += _read(primary, deadline)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        elapsed = time.monotonic() - sent
        after = b""
        while chunk := _read(primary, time.monotonic() + 5):
            after += chunk
    finally:
        proc.kill()
        os.close(primary)
    text = _ESCAPES.sub(b"", seen + after).decode(errors="replace")
    assert proc.returncode == 130, text[-2000:]
    lines = [line.strip() for line in _ESCAPES.sub(b"\n", after).decode(errors="replace").splitlines()]
    assert [line for line in lines if line.startswith("interrupted")] == ["interrupted: nothing was written"]
    assert lines and [line for line in lines if line][-1] == "interrupted: nothing was written", lines
    assert "Traceback" not in text and proc.stdout.read() == b""
    assert elapsed < EXIT_BOUND_S, f"{elapsed:.1f} s from SIGINT to exit"
    assert sorted(p.name for p in work.iterdir()) == ["tiny.py"]  # no OUTDIR, no temporary folder
