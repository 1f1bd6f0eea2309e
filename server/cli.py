"""`convert serve` and `python -m server`: parse the server's options and run it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from convert.errors import ConvertError, outcome_of
from server.config import (
    AUTH_TOKEN_ENV,
    DEFAULT_FACTORIES,
    DEFAULT_GRACE,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_RPCS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_TIME_LIMIT,
    ServerConfig,
)
from server.service import serve

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert serve",
        description="Run the conversion service (gRPC): clients upload a model, it is converted as a job in a worker "
        "process, they watch it and download the results.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}; 0 picks a free one")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CONVERT_DATA_DIR", "convert-data")),
        help="job records (SQLite), uploads and artifacts (default: $CONVERT_DATA_DIR or ./convert-data)",
    )
    p.add_argument("--workers", type=int, default=1, help="jobs converted at once, one process each (default: 1)")
    jobs = p.add_argument_group("limits")
    jobs.add_argument(
        "--job-time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        metavar="SECONDS",
        help=f"a job running longer is stopped and FAILED (default: {DEFAULT_TIME_LIMIT:g})",
    )
    jobs.add_argument(
        "--worker-memory-mb",
        type=int,
        metavar="MB",
        help="memory limit of each worker process (RLIMIT_DATA; default: physical memory / --workers)",
    )
    jobs.add_argument(
        "--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB, help=f"default: {DEFAULT_MAX_UPLOAD_MB}"
    )
    jobs.add_argument(
        "--max-queued",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        help=f"jobs waiting at most (default: {DEFAULT_MAX_QUEUED})",
    )
    jobs.add_argument(
        "--max-concurrent-rpcs",
        dest="max_rpcs",
        type=int,
        default=DEFAULT_MAX_RPCS,
        help=f"calls served at once, each watch included (default: {DEFAULT_MAX_RPCS})",
    )
    jobs.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM, how long running jobs may finish before they are stopped (default: {DEFAULT_GRACE:g})",
    )
    safety = p.add_argument_group("security")
    safety.add_argument(
        "--allow-factory",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also accept factory specs matching this pattern, e.g. 'mynet:*' "
        f"(always: {', '.join(DEFAULT_FACTORIES)})",
    )
    safety.add_argument(
        "--allow-untrusted-code",
        action="store_true",
        help="accept uploaded whole-model pickles and .pt2 archives, which run code when loaded (in a worker only)",
    )
    safety.add_argument(
        "--auth-token",
        default=os.environ.get(AUTH_TOKEN_ENV),
        help=f"calls must carry 'authorization: Bearer TOKEN' (default: ${AUTH_TOKEN_ENV}; none: no auth)",
    )
    safety.add_argument("--tls-cert", type=Path, metavar="PEM", help="certificate chain: serve TLS (with --tls-key)")
    safety.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--reflection", action="store_true", help="serve gRPC reflection (for grpcurl and similar tools)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        for path in (args.tls_cert, args.tls_key):
            if path is not None and not path.is_file():
                raise ConvertError(f"{path}: no such file (--tls-cert and --tls-key take PEM files)")
        config = ServerConfig(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            workers=args.workers,
            allow_factories=(*DEFAULT_FACTORIES, *args.allow_factory),
            allow_untrusted_code=args.allow_untrusted_code,
            auth_token=args.auth_token or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_upload_mb=args.max_upload_mb,
            max_queued=args.max_queued,
            max_rpcs=args.max_rpcs,
            job_time_limit=args.job_time_limit,
            worker_memory_mb=args.worker_memory_mb,
            reflection=args.reflection,
            grace=args.grace,
        )
        serve(config, announce=lambda line: print(line, flush=True))
    except ConvertError as e:
        print(f"convert serve: error: {e}", file=sys.stderr)
        return outcome_of(e).exit_code  # the CLI's mapping: 2 for a bad option
    return 0
