"""The arguments that reach a `convert serve` server: a job's --server, and the options of `convert jobs`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from convert.cli import argtypes
from convert.cli.args.base import switch

__all__ = ["connection_arguments", "service_arguments"]


def connection_arguments(group: argparse._ActionsContainer, server_help: str, *, required: bool = False) -> None:
    """Where the server is and how to speak to it: --server, its token, TLS."""
    group.add_argument("--server", required=required, metavar="HOST:PORT", help=server_help)
    group.add_argument(
        "--auth-token",
        default=os.environ.get("CONVERT_AUTH_TOKEN"),
        help="the server's token (default: $CONVERT_AUTH_TOKEN)",
    )
    switch(group, "--tls", help="speak TLS, trusting the system's CAs")
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="speak TLS, trusting this CA certificate")


def service_arguments(group: argparse._ArgumentGroup) -> None:
    """A job run on a server: the connection, and what the job asks of the cluster behind it."""
    connection_arguments(
        group,
        "upload the model and any --distill/--val tensor files (their bytes, not loaded here) and convert it "
        "there; results are downloaded into OUTDIR",
    )
    group.add_argument(
        "--accelerator",
        metavar="TYPE",
        help="on a server on a Ray cluster: run on a node with this Ray accelerator type (e.g. H100), on one GPU",
    )
    group.add_argument(
        "--resource",
        dest="resources",
        action="append",
        type=argtypes.resource,
        metavar="NAME=AMOUNT",
        help="on a server on a Ray cluster: run on a node with this Ray custom resource, taking AMOUNT; repeatable",
    )
