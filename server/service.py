"""Assemble and run the service: the gRPC server (RPCs, optional reflection), the health check's own server, the
data folder (locked), the job store, the sweeper, and the worker pool on its runner; start and stop them in order."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from convert.errors import ConvertError
from server.auth import TokenAuth, server_credentials
from server.config import ServerConfig, is_loopback
from server.datadir import DataDir, Sweeper
from server.events import EventHub
from server.pool import WorkerPool
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc
from server.runners import LocalRunner
from server.sandbox import find_sandbox, require_sandbox
from server.servicer import ConverterServicer
from server.store import JobStore
from server.uploads import MAX_CHUNK

__all__ = ["INTERRUPTED", "SERVICE_NAME", "Service", "run_server", "serve", "warnings_of"]

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Converter"].full_name  # "convert.v1.Converter"
INTERRUPTED = "the server stopped while this job ran (crash or kill): submit it again"
_HEALTH_THREADS = 4
# Transport: find dead peers of long calls (keepalive pings), and close idle or very old connections (clients
# reconnect on their own); the grace lets a long upload on an old connection finish.
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
    ("grpc.http2.max_ping_strikes", 3),
    ("grpc.max_connection_idle_ms", 15 * 60_000),
    ("grpc.max_connection_age_ms", 60 * 60_000),
    ("grpc.max_connection_age_grace_ms", 30 * 60_000),
]


class Service:
    """The running service. `start()`, then `stop()` (what SIGTERM does)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.data = DataDir(config.data_dir)  # locked from here on: a second server stops here
        try:
            self.sandbox, self.sandbox_line = None, "off"
            if config.allow_untrusted_code:  # uploaded code runs in the workers: in a sandbox, or trusted
                found = find_sandbox(hidden=_secrets(config), readable=[os.getcwd()])
                require_sandbox(config.allow_untrusted_code, config.trust_uploaded_code, found)
                self.sandbox, self.sandbox_line = found[0], found[1] if found[0] else "off (trusted uploaded code)"
            try:
                self.store = JobStore(config.data_dir / "jobs.sqlite")
            except Exception as e:  # sqlite's many errors: one line saying what to check
                raise ConvertError(f"cannot open the job records in {config.data_dir} ({e}): check the folder") from e
            for job_id in self.store.fail_interrupted(INTERRUPTED):
                logger.warning("job %s was running when the server stopped: marked FAILED", job_id)
            for what in self.data.remove_orphans(self.store):
                logger.warning("removed what the last server left behind: %s", what)
            self._build(config)
        except BaseException:
            self.data.close()
            raise
        self._stopped = threading.Event()

    def _build(self, config: ServerConfig) -> None:
        self.hub = EventHub()
        runner = LocalRunner(config, sandbox=self.sandbox)
        self.pool = WorkerPool(config, self.store, self.hub, self.data.jobs, runner, artifacts_dir=self.data.artifacts)
        self.sweeper = Sweeper(
            self.store, self.data, config.retention_days, self.pool.retry_unrecorded, self.pool.is_active
        )
        self.servicer = ConverterServicer(config, self.store, self.pool, self.hub, self.data)
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_rpcs, thread_name_prefix="rpc"),
            interceptors=[TokenAuth(config.auth_token)] if config.auth_token else [],
            maximum_concurrent_rpcs=config.max_rpcs,
            options=[
                ("grpc.max_receive_message_length", MAX_CHUNK + 64 * 1024),  # one chunk and its framing
                ("grpc.max_send_message_length", MAX_CHUNK + 64 * 1024),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
                *_KEEPALIVE,
            ],
        )
        pb_grpc.add_ConverterServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.reflection:
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        # The health check alone, on threads of its own: no number of watches or stalled uploads can starve it.
        self.health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=_HEALTH_THREADS, thread_name_prefix="health"),
            options=[("grpc.so_reuseport", 0), ("grpc.max_connection_idle_ms", 60_000)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.port = self._listen(self.server, config.port)
        self.health_port = self._listen(self.health_server, config.health_port)

    def _listen(self, server: grpc.Server, port: int) -> int:
        address = f"{self.config.host}:{port}"
        try:
            if self.config.tls_cert is not None:
                return server.add_secure_port(address, server_credentials(self.config.tls_cert, self.config.tls_key))
            return server.add_insecure_port(address)
        except (RuntimeError, OSError) as e:
            raise ConvertError(f"cannot listen on {address} ({e}): is the port in use? pick another port") from e

    def start(self) -> Service:
        self.pool.start()
        self.sweeper.start()
        self.health_server.start()
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, no new jobs, running jobs get `grace` seconds, then RPCs end."""
        if self._stopped.is_set():
            return
        grace = self.config.grace if grace is None else grace
        self.health.enter_graceful_shutdown()
        self.servicer.closing = True
        self.pool.stop(grace)
        self.sweeper.stop()
        self.hub.close()
        self.server.stop(grace=min(grace, 5.0)).wait()
        self.servicer.close()
        self.health_server.stop(grace=0).wait()
        self.store.close()
        self.data.close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    def describe(self) -> str:
        """The startup line: where it listens, and how it is protected."""
        config = self.config
        auth = "token" if config.auth_token else "none"
        tls = "on" if config.tls_cert else "off"
        return (
            f"serving on {config.host}:{self.port} (health on port {self.health_port}; auth: {auth}; TLS: {tls}; "
            f"sandbox: {self.sandbox_line}; {config.workers} workers; data in {config.data_dir})"
        )


@contextlib.contextmanager
def run_server(config: ServerConfig) -> Iterator[Service]:
    """A started service for the block's duration (stopped without grace after it)."""
    service = Service(config).start()
    try:
        yield service
    finally:
        service.stop(grace=0)


def serve(config: ServerConfig, announce=print) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    os.umask(0o077)  # the data folder, the records and every job's files: the server's user's only
    service = Service(config).start()
    announce(service.describe())
    for line in warnings_of(config, sandboxed=service.sandbox is not None):
        announce(f"warning: {line}")

    def shutdown(signum, _frame) -> None:
        announce(f"{signal.Signals(signum).name}: shutting down (running jobs get {config.grace:g} s)")
        threading.Thread(target=service.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    service.wait()


def warnings_of(config: ServerConfig, sandboxed: bool) -> list[str]:
    """What the operator should know about how the server is exposed, one line each."""
    lines = []
    if config.auth_token and not config.tls_cert and not is_loopback(config.host):
        lines.append("the token travels in plaintext (no --tls-cert): anyone on the path can read and reuse it")
    if config.auth_token is None and not is_loopback(config.host):
        lines.append(f"no auth on {config.host} (--insecure-no-auth): anyone who reaches the port can use the server")
    if config.allow_untrusted_code and not sandboxed:
        lines.append("uploaded code runs unsandboxed, as the server's user (--trust-uploaded-code)")
    return lines


def _secrets(config: ServerConfig) -> list:
    """What a sandboxed worker must not see: the data folder (every job), the token's file."""
    return [path.resolve() for path in (config.data_dir, config.auth_token_file) if path is not None]
