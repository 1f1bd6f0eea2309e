"""Bounds on the long calls, so that no client can take the capacity the others need: Watch streams and uploads
at once (in all, and per client host), and uploads that stall.

The gRPC server serves each call on a thread of a pool sized from these bounds: watches and uploads never take
more than their share, and the health check has a server of its own (`server.service`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
from grpc._cython import cygrpc

__all__ = ["CallLimits", "IdleWatchdog", "TooMany", "client_host"]

logger = logging.getLogger(__name__)

_PLURAL = {"watch": "watches", "upload": "uploads"}
_CHECK_EVERY = 0.5  # seconds between two looks of the watchdog at the uploads it follows


class TooMany(Exception):
    """A call over its bound: the message says which and what to do."""


def client_host(peer: str) -> str:
    """The host part of a gRPC peer ("ipv4:127.0.0.1:5000" -> "127.0.0.1", "ipv6:[::1]:5000" -> "::1"): the
    connections of one client machine share its bounds, whatever their ports."""
    kind, _, address = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = address.rpartition(":")[0] or address
    return host.strip("[]")


class CallLimits:
    """Counts the calls of each kind open now, in all and per client host, and refuses those over the bounds.

    Args:
        totals: the bound of each kind in all, e.g. {"watch": 32, "upload": 8}.
        per_client: the bound of each kind per client host.
    """

    def __init__(self, totals: dict[str, int], per_client: int) -> None:
        self._totals, self._per_client = totals, per_client
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._by_client: Counter[tuple[str, str]] = Counter()

    @contextlib.contextmanager
    def slot(self, kind: str, client: str) -> Iterator[None]:
        """Hold one call of `kind` from `client` for the block.

        Raises:
            TooMany: when `kind` is at its bound, in all or for this client.
        """
        with self._lock:
            if self._open[kind] >= self._totals[kind]:
                raise TooMany(f"the server has {self._open[kind]} {_PLURAL[kind]} open, its limit: {_what_to_do(kind)}")
            if self._by_client[kind, client] >= self._per_client:
                raise TooMany(
                    f"this client ({client}) has {self._per_client} {_PLURAL[kind]} open, the limit per client: "
                    f"{_what_to_do(kind)}"
                )
            self._open[kind] += 1
            self._by_client[kind, client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._open[kind] -= 1
                self._by_client[kind, client] -= 1
                if not self._by_client[kind, client]:
                    del self._by_client[kind, client]

    def open(self, kind: str) -> int:
        with self._lock:
            return self._open[kind]


def _what_to_do(kind: str) -> str:
    if kind == "watch":
        return "close some (or follow jobs with GetJob), then watch again"
    return "let some finish, then submit again"


class IdleWatchdog:
    """Ends the calls it follows that go `timeout` seconds without a sign of life, with DEADLINE_EXCEEDED and a
    message: one thread for all of them.

    A blocked read of a client stream cannot time out in grpc's synchronous server; ending the call from another
    thread is the one way, and only the call's core object can end it with a status of our choosing (the public
    `context.cancel()` says CANCELLED and nothing else).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followed: dict[int, tuple[grpc.ServicerContext, float, float, str]] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def follow(self, context: grpc.ServicerContext, timeout: float, message: str) -> Iterator[Callable[[], None]]:
        """Follow `context` for the block, which receives `alive()`: call it at each sign of life (a chunk)."""
        key = id(context)

        def alive() -> None:
            with self._lock:
                self._followed[key] = (context, time.monotonic() + timeout, timeout, message)

        alive()
        try:
            yield alive
        finally:
            with self._lock:
                self._followed.pop(key, None)

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(_CHECK_EVERY):
            now = time.monotonic()
            with self._lock:
                idle = [(k, v) for k, v in self._followed.items() if v[1] < now]
                for key, _ in idle:
                    del self._followed[key]
            for _, (context, _, timeout, message) in idle:
                logger.warning("ending a call idle for %g s: %s", timeout, message)
                _end(context, message)


def _end(context: grpc.ServicerContext, message: str) -> None:
    """End the call now with DEADLINE_EXCEEDED and `message` (CANCELLED where grpc's internals differ)."""
    try:
        call = context._rpc_event.call  # noqa: SLF001 - see IdleWatchdog: the core call ends it with our status
        call.cancel(cygrpc.StatusCode.deadline_exceeded, message)
    except AttributeError:
        context.cancel()
