"""The Dockerfile: no Docker engine here, so check what it declares and run the commands it runs (CMD and
HEALTHCHECK) against each other, as the container would, on a free loopback port."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from servers import launch, server_env

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> dict[str, list[str]]:
    """Instruction name -> the argument text of each occurrence (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            found.setdefault(name.upper(), []).append(rest.strip())
    return found


def exec_form(text: str) -> list[str]:
    assert text.startswith("["), f"use the exec form (a JSON list), so that signals reach python: {text}"
    return json.loads(text)


def free_port() -> int:
    """A free port whose successor is free too (the health port)."""
    while True:
        with socket.socket() as s, socket.socket() as t:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            try:
                t.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port


def localize(command: list[str], port: int, data: Path) -> list[str]:
    """The container's command on this machine: this python, free loopback ports (the health port is the next
    one), a temporary data folder."""
    swap = {"python": sys.executable, "0.0.0.0": "127.0.0.1", "50051": str(port), "/data": str(data)}
    swap["50052"] = str(port + 1)
    return [swap.get(arg, arg) for arg in command]


def test_declarations() -> None:
    found = instructions()
    assert "cuda" in found["FROM"][0]
    assert found["USER"] and found["USER"][-1] not in ("root", "0")
    assert found["VOLUME"] == ["/data"]
    cmd = exec_form(found["CMD"][-1])
    assert cmd[cmd.index("--data-dir") + 1] == "/data" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert found["EXPOSE"] == [cmd[cmd.index("--port") + 1]]


@pytest.mark.slow
def test_cmd_serves_and_healthcheck_probes_it(tmp_path: Path) -> None:
    found = instructions()
    port = free_port()
    server_command = localize(exec_form(found["CMD"][-1]), port, tmp_path / "data")
    options, _, probe = found["HEALTHCHECK"][-1].partition("CMD ")
    assert "--interval" in options
    probe_command = localize(exec_form(probe.strip()), port, tmp_path / "data")

    def probe_status() -> int:
        return subprocess.run(probe_command, env=server_env(), capture_output=True, timeout=60).returncode

    assert probe_status() == 1  # nothing there yet
    server = launch(server_command, tmp_path)
    try:
        assert probe_status() == 0
        assert (tmp_path / "data" / "jobs.sqlite").is_file()
    finally:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0  # graceful shutdown on SIGTERM (docker stop)
    assert probe_status() == 1
