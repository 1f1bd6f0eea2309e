"""The server's settings: one frozen dataclass, filled by `convert serve` / `python -m server`."""

from __future__ import annotations

import dataclasses
import fnmatch
import ipaddress
import re
from pathlib import Path

from convert.errors import ConvertError

__all__ = [
    "AUTH_TOKEN_ENV",
    "DEFAULT_FACTORIES",
    "DEFAULT_GRACE",
    "DEFAULT_HEALTH_PORT",
    "DEFAULT_MAX_PER_CLIENT",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_RPCS",
    "DEFAULT_MAX_UPLOADS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_WATCHES",
    "DEFAULT_MIN_FREE_MB",
    "DEFAULT_PORT",
    "DEFAULT_TIME_LIMIT",
    "DEFAULT_UPLOAD_IDLE",
    "DEFAULT_WATCH_MAX_AGE",
    "ServerConfig",
    "is_loopback",
]

DEFAULT_PORT = 50051
DEFAULT_FACTORIES = ("torchvision.models:*",)  # built-in architectures: no code from the client
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_MAX_QUEUED = 64  # jobs waiting for a worker; Submit beyond it is RESOURCE_EXHAUSTED
DEFAULT_MAX_RPCS = 64  # RPCs served at once (each Watch and each upload holds one for its duration)
DEFAULT_MAX_WATCHES = 32  # Watch streams open at once, below the RPC bound: the other calls keep their share
DEFAULT_MAX_UPLOADS = 8  # Submit streams at once
DEFAULT_MAX_PER_CLIENT = 8  # Watch streams, and uploads, at once from one client host
DEFAULT_UPLOAD_IDLE = 30.0  # seconds without a chunk after which an upload is ended
DEFAULT_WATCH_MAX_AGE = 600.0  # seconds after which a Watch stream ends (the client watches again)
DEFAULT_HEALTH_PORT = DEFAULT_PORT + 1  # grpc.health.v1 alone, on a server of its own that no client can exhaust
DEFAULT_MIN_FREE_MB = 512  # disk space a Submit must leave free, after its declared sizes
DEFAULT_TIME_LIMIT = 3600.0  # seconds one job may run before its worker is killed
DEFAULT_GRACE = 10.0  # seconds SIGTERM waits for running jobs and RPCs before killing them
AUTH_TOKEN_ENV = "CONVERT_AUTH_TOKEN"  # the token, when --auth-token is not given
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # a factory's callable: public, no dotted attribute paths


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the service runs. Override fields with `dataclasses.replace`."""

    data_dir: Path  # SQLite job records, uploads and artifacts
    host: str = "127.0.0.1"  # address to listen on; 0.0.0.0 for every interface (in a container)
    port: int = DEFAULT_PORT  # 0 picks a free port (printed at start)
    workers: int = 1  # jobs converted at once, each in its own process
    # Factory specs a client may name, as fnmatch patterns over `package.module:callable`.
    allow_factories: tuple[str, ...] = DEFAULT_FACTORIES
    # Accept uploaded whole-model pickles and .pt2 archives (code!), loaded only in the workers.
    allow_untrusted_code: bool = False
    auth_token: str | None = None  # required in the `authorization: Bearer TOKEN` metadata when set
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key, the server speaks TLS only
    tls_key: Path | None = None  # PEM private key
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB  # largest upload accepted, in MiB
    max_queued: int = DEFAULT_MAX_QUEUED
    max_rpcs: int = DEFAULT_MAX_RPCS
    job_time_limit: float = DEFAULT_TIME_LIMIT  # seconds
    # Memory limit of each worker process (RLIMIT_DATA: heap and private mappings) in MiB; None: RAM / workers.
    worker_memory_mb: int | None = None
    reflection: bool = False  # serve grpc.reflection.v1alpha (lets grpcurl discover the API)
    grace: float = DEFAULT_GRACE  # seconds, on SIGTERM
    health_port: int | None = None  # the health check's own port; 0 picks a free one; None: port + 1 (0 for 0)
    max_watches: int = DEFAULT_MAX_WATCHES
    max_uploads: int = DEFAULT_MAX_UPLOADS
    max_per_client: int = DEFAULT_MAX_PER_CLIENT  # watches, and uploads, from one client host
    upload_idle_timeout: float = DEFAULT_UPLOAD_IDLE  # seconds
    watch_max_age: float = DEFAULT_WATCH_MAX_AGE  # seconds
    insecure_no_auth: bool = False  # listen beyond loopback without a token (the operator's explicit choice)
    # Run uploaded code without a sandbox where none can be had: the equivalent of a shell as the server's user.
    trust_uploaded_code: bool = False
    auth_token_file: Path | None = None  # where auth_token was read from (hidden from sandboxed workers)
    retention_days: float | None = None  # finished jobs are deleted this long after they finished; None: kept
    min_free_mb: int = DEFAULT_MIN_FREE_MB  # MiB a Submit must leave free on the data folder's disk

    def __post_init__(self) -> None:
        for name in ("workers", "max_upload_mb", "max_queued", "max_rpcs", "max_watches", "max_uploads"):
            if getattr(self, name) < 1:
                raise ConvertError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid: use 1 or more")
        if self.max_per_client < 1:
            raise ConvertError(f"--max-per-client {self.max_per_client} is not valid: use 1 or more")
        if self.max_watches + self.max_uploads >= self.max_rpcs:
            raise ConvertError(
                f"--max-watches {self.max_watches} and --max-uploads {self.max_uploads} leave no room for the other "
                f"calls under --max-concurrent-rpcs {self.max_rpcs}: keep their sum below it"
            )
        for name in ("job_time_limit", "upload_idle_timeout", "watch_max_age"):
            if not getattr(self, name) > 0:
                raise ConvertError(
                    f"--{name.replace('_', '-')} {getattr(self, name)} is not valid: use a positive number of seconds"
                )
        if self.retention_days is not None and not self.retention_days > 0:
            raise ConvertError(f"--retention-days {self.retention_days} is not valid: use a positive number of days")
        if self.min_free_mb < 0:
            raise ConvertError(f"--min-free-mb {self.min_free_mb} is not valid: use 0 or more")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ConvertError(
                "the auth token is empty (--auth-token, --auth-token-file or CONVERT_AUTH_TOKEN): give a real one, "
                "or none at all"
            )
        if self.auth_token is None and not is_loopback(self.host) and not self.insecure_no_auth:
            raise ConvertError(
                f"--host {self.host} listens beyond this machine, and without a token anyone who reaches it can "
                "submit and read jobs: give --auth-token-file (or CONVERT_AUTH_TOKEN), or say --insecure-no-auth"
            )
        if self.trust_uploaded_code and not self.allow_untrusted_code:
            raise ConvertError("--trust-uploaded-code goes with --allow-untrusted-code")
        if self.worker_memory_mb is not None and self.worker_memory_mb < 256:
            raise ConvertError(f"--worker-memory-mb {self.worker_memory_mb} is too small: use 256 or more")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConvertError("TLS needs both --tls-cert and --tls-key")
        if self.health_port is None:
            object.__setattr__(self, "health_port", self.port + 1 if self.port else 0)
        for name in ("port", "health_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ConvertError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid: use 0 to 65535")
        if self.port and self.port == self.health_port:
            raise ConvertError(f"--health-port {self.health_port} is --port: give the health check a port of its own")
        for pattern in self.allow_factories:
            if ":" not in pattern:
                raise ConvertError(
                    f"--allow-factory {pattern!r} is not valid: use package.module:PATTERN, e.g. mynet:*"
                )

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def check_factory(self, spec: str) -> None:
        """Refuse a factory spec that the allowlist does not name.

        Raises:
            ConvertError: naming the allowlist and the server option that extends it.
        """
        module, _, name = spec.partition(":")
        if not module or not _IDENTIFIER.fullmatch(name):
            raise ConvertError(
                f"factory spec {spec!r} is not valid: use package.module:callable with a public callable, "
                "e.g. torchvision.models:resnet18"
            )
        if not any(fnmatch.fnmatchcase(spec, pattern) for pattern in self.allow_factories):
            raise ConvertError(
                f"factory {spec!r} is not on this server's allowlist ({', '.join(self.allow_factories)}): use one "
                f"of those, or ask its operator to start it with --allow-factory '{module}:*'"
            )


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
