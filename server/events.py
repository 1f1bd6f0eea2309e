"""Job events fanned out to the Watch streams that follow each job."""

from __future__ import annotations

import queue
import threading
from collections import defaultdict

from server.rpc import converter_pb2 as pb
from server.store import FINISHED

__all__ = ["CLOSED", "EventHub", "is_final"]

CLOSED = None  # put on every subscriber's queue when the server shuts down


class EventHub:
    """Thread-safe publish/subscribe of JobEvents, by job id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[queue.SimpleQueue]] = defaultdict(list)
        self._closed = False

    def subscribe(self, job_id: str) -> queue.SimpleQueue:
        """A queue that receives the job's events from now on (and CLOSED when the server shuts down)."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            if self._closed:
                inbox.put(CLOSED)
            else:
                self._subscribers[job_id].append(inbox)
        return inbox

    def unsubscribe(self, job_id: str, inbox: queue.SimpleQueue) -> None:
        with self._lock:
            inboxes = self._subscribers.get(job_id, [])
            if inbox in inboxes:
                inboxes.remove(inbox)
            if not inboxes:
                self._subscribers.pop(job_id, None)

    def publish(self, event: pb.JobEvent) -> None:
        with self._lock:
            inboxes = list(self._subscribers.get(event.job_id, ()))
        for inbox in inboxes:
            inbox.put(event)

    def close(self) -> None:
        """End every Watch stream (server shutdown)."""
        with self._lock:
            self._closed = True
            inboxes = [inbox for group in self._subscribers.values() for inbox in group]
        for inbox in inboxes:
            inbox.put(CLOSED)


def is_final(event: pb.JobEvent) -> bool:
    """Whether `event` is a job's last: a final state (a log line never is)."""
    return pb.JobState.Name(event.state) in FINISHED and not event.log
