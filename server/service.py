"""Assemble and run the service: the gRPC server (RPCs, health, optional reflection), the job store, and the worker
pool on its runner; start and stop them in order."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from convert.errors import ConvertError
from server.auth import TokenAuth, server_credentials
from server.config import ServerConfig
from server.events import EventHub
from server.pool import WorkerPool
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc
from server.runners import LocalRunner
from server.servicer import ConverterServicer
from server.store import JobStore
from server.uploads import MAX_CHUNK

__all__ = ["INTERRUPTED", "SERVICE_NAME", "Service", "run_server", "serve"]

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Converter"].full_name  # "convert.v1.Converter"
INTERRUPTED = "the server stopped while this job ran (crash or kill): submit it again"


class Service:
    """The running service. `start()`, then `stop()` (what SIGTERM does)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        data = config.data_dir
        try:
            data.mkdir(parents=True, exist_ok=True)
            jobs_dir = data / "jobs"
            jobs_dir.mkdir(exist_ok=True)
            self.store = JobStore(data / "jobs.sqlite")
        except OSError as e:
            raise ConvertError(f"cannot use {data} as the data folder ({e}): give --data-dir a writable folder") from e
        for job_id in self.store.fail_interrupted(INTERRUPTED):
            logger.warning("job %s was running when the server stopped: marked FAILED", job_id)
        _remove_unrecorded(jobs_dir, self.store)
        self.hub = EventHub()
        self.pool = WorkerPool(config, self.store, self.hub, jobs_dir, LocalRunner(config))
        self.servicer = ConverterServicer(config, self.store, self.pool, self.hub, jobs_dir)
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_rpcs, thread_name_prefix="rpc"),
            interceptors=[TokenAuth(config.auth_token)] if config.auth_token else [],
            maximum_concurrent_rpcs=config.max_rpcs,
            options=[
                ("grpc.max_receive_message_length", MAX_CHUNK + 64 * 1024),  # one chunk and its framing
                ("grpc.max_send_message_length", MAX_CHUNK + 64 * 1024),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server sharing it
            ],
        )
        pb_grpc.add_ConverterServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.reflection:
            names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server)
        address = f"{config.host}:{config.port}"
        try:
            if config.tls_cert is not None:
                self.port = self.server.add_secure_port(address, server_credentials(config.tls_cert, config.tls_key))
            else:
                self.port = self.server.add_insecure_port(address)
        except (RuntimeError, OSError) as e:
            raise ConvertError(f"cannot listen on {address} ({e}): is the port in use? pick another --port") from e
        self._stopped = threading.Event()

    def start(self) -> Service:
        self.pool.start()
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
        self.hub.close()
        self.server.stop(grace=min(grace, 5.0)).wait()
        self.store.close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()


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
    service = Service(config).start()
    scheme = "TLS" if config.tls_cert else "plaintext"
    announce(f"serving on {config.host}:{service.port} ({scheme}, {config.workers} workers, data in {config.data_dir})")

    def shutdown(signum, _frame) -> None:
        announce(f"{signal.Signals(signum).name}: shutting down (running jobs get {config.grace:g} s)")
        threading.Thread(target=service.stop, name="shutdown").start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    service.wait()


def _remove_unrecorded(jobs_dir, store: JobStore) -> None:
    """Folders of uploads that never became jobs (the server stopped during them)."""
    for folder in jobs_dir.iterdir():
        if store.get(folder.name) is None:
            shutil.rmtree(folder, ignore_errors=True)
