"""The server's settings: one frozen dataclass, filled by `convert serve` / `python -m server`."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from pathlib import Path

from convert.errors import ConvertError

__all__ = [
    "AUTH_TOKEN_ENV",
    "DEFAULT_FACTORIES",
    "DEFAULT_GRACE",
    "DEFAULT_MAX_QUEUED",
    "DEFAULT_MAX_RPCS",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_PORT",
    "DEFAULT_TIME_LIMIT",
    "ServerConfig",
]

DEFAULT_PORT = 50051
DEFAULT_FACTORIES = ("torchvision.models:*",)  # built-in architectures: no code from the client
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_MAX_QUEUED = 64  # jobs waiting for a worker; Submit beyond it is RESOURCE_EXHAUSTED
DEFAULT_MAX_RPCS = 64  # RPCs served at once (each Watch holds one for its duration)
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

    def __post_init__(self) -> None:
        for name in ("workers", "max_upload_mb", "max_queued", "max_rpcs"):
            if getattr(self, name) < 1:
                raise ConvertError(f"--{name.replace('_', '-')} {getattr(self, name)} is not valid: use 1 or more")
        if not self.job_time_limit > 0:
            raise ConvertError(f"--job-time-limit {self.job_time_limit} is not valid: use a positive number of seconds")
        if self.worker_memory_mb is not None and self.worker_memory_mb < 256:
            raise ConvertError(f"--worker-memory-mb {self.worker_memory_mb} is too small: use 256 or more")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConvertError("TLS needs both --tls-cert and --tls-key")
        if not 0 <= self.port < 65536:
            raise ConvertError(f"--port {self.port} is not valid: use 0 to 65535")
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
