"""`convert jobs list|delete`: the jobs a `convert serve` server keeps, listed or deleted from the command line."""

from __future__ import annotations

import argparse
import time

from convert.cli.args.base import Parser, switch
from convert.cli.args.service import connection_arguments
from convert.errors import ConvertError

__all__ = ["parser", "run"]

_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def parser() -> argparse.ArgumentParser:
    """The arguments of `convert jobs list|delete` (each a subcommand, so that options and ids mix freely)."""
    server = Parser(add_help=False)
    connection_arguments(server, "the `convert serve` server", required=True)
    switch(server, "-v", "--verbose", help="log details")
    p = Parser(prog="convert jobs", description="List or delete the jobs of a conversion server.")
    actions = p.add_subparsers(dest="action", required=True, metavar="list|delete")
    listing = actions.add_parser("list", parents=[server], help="the server's jobs, newest first")
    listing.add_argument("--state", action="append", choices=_STATES, help="only jobs in this state (repeatable)")
    listing.add_argument("--limit", type=int, default=100, help="at most this many jobs (default: 100)")
    deleting = actions.add_parser("delete", parents=[server], help="delete finished jobs: records, files, artifacts")
    deleting.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="the jobs to delete (`convert jobs list`)")
    return p


def run(args: argparse.Namespace, out=print) -> int:
    """List or delete jobs on `args.server`; prints one line per job. Returns the exit status (0)."""
    from server.client import ConvertClient  # grpc is imported only for remote work
    from server.rpc import converter_pb2 as pb

    if args.action == "list" and args.limit < 1:
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
