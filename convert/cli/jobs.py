"""`convert jobs list|delete`: the jobs a `convert serve` server keeps, listed or deleted from the command line."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from convert.cli.args import Parser
from convert.errors import ConvertError

__all__ = ["parser", "run"]

_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def parser() -> argparse.ArgumentParser:
    """The arguments of `convert jobs`."""
    p = Parser(prog="convert jobs", description="List or delete the jobs of a conversion server.")
    p.add_argument("action", choices=("list", "delete"), help="list: newest first; delete: finished jobs by id")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="delete: the jobs to delete (32 hex digits each)")
    p.add_argument("--server", required=True, metavar="HOST:PORT", help="the `convert serve` server")
    p.add_argument(
        "--auth-token",
        default=os.environ.get("CONVERT_AUTH_TOKEN"),
        help="the server's token (default: $CONVERT_AUTH_TOKEN)",
    )
    p.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's CAs")
    p.add_argument("--tls-ca", type=Path, metavar="PEM", help="speak TLS, trusting this CA certificate")
    p.add_argument("--state", action="append", choices=_STATES, help="list: only jobs in this state (repeatable)")
    p.add_argument("--limit", type=int, default=100, help="list: at most this many jobs (default: 100)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def run(args: argparse.Namespace, out=print) -> int:
    """List or delete jobs on `args.server`; prints one line per job. Returns the exit status (0)."""
    from server.client import ConvertClient  # grpc is imported only for remote work
    from server.rpc import converter_pb2 as pb

    if args.action == "delete" and not args.job_ids:
        raise ConvertError("`convert jobs delete` needs the ids of the jobs to delete (`convert jobs list` shows them)")
    if args.action == "list" and args.job_ids:
        raise ConvertError("`convert jobs list` takes no job ids: filter with --state")
    if args.limit < 1:
        raise ConvertError(f"--limit {args.limit} is not valid: use 1 or more")
    with ConvertClient(args.server, auth_token=args.auth_token, tls=args.tls, tls_ca=args.tls_ca) as client:
        if args.action == "delete":
            for job_id in args.job_ids:
                client.delete(job_id)
                out(f"deleted {job_id}")
            return 0
        states = [pb.JobState.Value(state.upper()) for state in args.state or ()]
        for job in client.list(states=states, limit=args.limit):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
            state = pb.JobState.Name(job.state)
            detail = job.message or (f"{job.stage} {job.progress:.0%}" if job.state == pb.RUNNING else "")
            out(f"{job.id}  {state:<9}  {created}  {job.source}{f'  {detail}' if detail else ''}")
    return 0
