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
    DEFAULT_HEALTH_PORT,
    DEFAULT_MAX_PER_CLIENT,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_RPCS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_UPLOADS,
    DEFAULT_MAX_WATCHES,
    DEFAULT_MIN_FREE_MB,
    DEFAULT_PORT,
    DEFAULT_TIME_LIMIT,
    DEFAULT_UPLOAD_IDLE,
    DEFAULT_WATCH_MAX_AGE,
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
        "--health-port",
        type=int,
        help=f"grpc.health.v1 alone, which no client can exhaust: probe this one (default: --port + 1, so "
        f"{DEFAULT_HEALTH_PORT}; 0 picks a free one; the main port serves it too)",
    )
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
        help="memory limit of each worker process (RLIMIT_DATA; default: physical memory less a tenth, at least 1 "
        "GiB, left to the server, shared by --workers)",
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
        help=f"calls served at once, watches and uploads included (default: {DEFAULT_MAX_RPCS})",
    )
    jobs.add_argument(
        "--max-watches",
        type=int,
        default=DEFAULT_MAX_WATCHES,
        help=f"Watch streams open at once (default: {DEFAULT_MAX_WATCHES})",
    )
    jobs.add_argument(
        "--max-uploads", type=int, default=DEFAULT_MAX_UPLOADS, help=f"Submits at once (default: {DEFAULT_MAX_UPLOADS})"
    )
    jobs.add_argument(
        "--max-per-client",
        type=int,
        default=DEFAULT_MAX_PER_CLIENT,
        help=f"watches, and uploads, at once from one client host (default: {DEFAULT_MAX_PER_CLIENT})",
    )
    jobs.add_argument(
        "--upload-idle-timeout",
        type=float,
        default=DEFAULT_UPLOAD_IDLE,
        metavar="SECONDS",
        help=f"an upload that sends nothing this long is ended (default: {DEFAULT_UPLOAD_IDLE:g})",
    )
    jobs.add_argument(
        "--watch-max-age",
        type=float,
        default=DEFAULT_WATCH_MAX_AGE,
        metavar="SECONDS",
        help=f"a Watch stream ends after this long; clients watch again (default: {DEFAULT_WATCH_MAX_AGE:g})",
    )
    jobs.add_argument(
        "--retention-days",
        type=float,
        metavar="DAYS",
        help="delete finished jobs (records, files, artifacts) this long after they finished (default: keep them)",
    )
    jobs.add_argument(
        "--min-free-mb",
        type=int,
        default=DEFAULT_MIN_FREE_MB,
        metavar="MB",
        help=f"refuse a Submit that would leave less free disk space (default: {DEFAULT_MIN_FREE_MB})",
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
        help="accept uploaded whole-model pickles and .pt2 archives, which run code when loaded: in a worker "
        "sandboxed by bubblewrap (no network, its job's folder only, uid nobody); refused where no sandbox works",
    )
    safety.add_argument(
        "--trust-uploaded-code",
        action="store_true",
        help="with --allow-untrusted-code where no sandbox can be had: run uploaded code unsandboxed, as the server's "
        "user (the equivalent of a shell as that user)",
    )
    token = safety.add_mutually_exclusive_group()
    token.add_argument(
        "--auth-token",
        default=os.environ.get(AUTH_TOKEN_ENV),
        help=f"calls must carry 'authorization: Bearer TOKEN' (default: ${AUTH_TOKEN_ENV}; unset: no auth); prefer "
        "--auth-token-file, which other users cannot read in the process list",
    )
    token.add_argument("--auth-token-file", type=Path, metavar="FILE", help="read the token from FILE (one line)")
    safety.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="listen beyond loopback (--host) without a token: anyone who reaches the port can submit and read jobs",
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
        token = args.auth_token
        if args.auth_token_file is not None:
            try:
                token = args.auth_token_file.read_text().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ConvertError(f"cannot read --auth-token-file {args.auth_token_file} ({e})") from e
        config = ServerConfig(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            workers=args.workers,
            allow_factories=(*DEFAULT_FACTORIES, *args.allow_factory),
            allow_untrusted_code=args.allow_untrusted_code,
            auth_token=token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_upload_mb=args.max_upload_mb,
            max_queued=args.max_queued,
            max_rpcs=args.max_rpcs,
            job_time_limit=args.job_time_limit,
            worker_memory_mb=args.worker_memory_mb,
            reflection=args.reflection,
            grace=args.grace,
            health_port=args.health_port,
            max_watches=args.max_watches,
            max_uploads=args.max_uploads,
            max_per_client=args.max_per_client,
            upload_idle_timeout=args.upload_idle_timeout,
            watch_max_age=args.watch_max_age,
            insecure_no_auth=args.insecure_no_auth,
            trust_uploaded_code=args.trust_uploaded_code,
            auth_token_file=args.auth_token_file,
            retention_days=args.retention_days,
            min_free_mb=args.min_free_mb,
        )
        serve(config, announce=lambda line: print(line, flush=True))
    except ConvertError as e:
        print(f"convert serve: error: {e}", file=sys.stderr)
        return outcome_of(e).exit_code  # the CLI's mapping: 2 for a bad option
    return 0
