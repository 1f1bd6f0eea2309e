"""The service from the command line: a job run through `--server`, `convert serve`; the only importer of server/."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from convert.common import Progress
from convert.job import JobOptions, Warn
from convert.report import Report

__all__ = ["Server", "run_remote", "serve"]


@dataclasses.dataclass(frozen=True)
class Server:
    """Where a `convert serve` server listens, and how to reach it."""

    address: str  # HOST:PORT
    auth_token: str | None = None  # the server's token, when it asks for one
    tls: bool = False  # speak TLS, trusting the system's CAs
    tls_ca: Path | None = None  # speak TLS, trusting this CA certificate (PEM)


def run_remote(
    server: Server,
    options: JobOptions,
    outdir: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    on_warning: Warn | None = None,
) -> Report:
    """What `convert.job.run_job` does, on `server`: upload, convert there, download the results into `outdir`.

    Raises:
        ConvertError: the server refused the job or it failed there (ParityError when ONNX Runtime did not match
            PyTorch).
    """
    from server.client import ConvertClient  # here, not at the top: grpc loads only for remote work

    with ConvertClient(server.address, auth_token=server.auth_token, tls=server.tls, tls_ca=server.tls_ca) as client:
        return client.run(options, outdir, progress=progress, on_warning=on_warning)


def serve(argv: Sequence[str]) -> int:
    """`convert serve ...`: the gRPC service, with the options of its own (`server/cli.py`).

    Returns:
        The exit status.
    """
    from server.cli import main

    return main(argv)
