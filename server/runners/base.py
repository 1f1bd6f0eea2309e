"""The interface between the worker pool and where its jobs run: a `Runner` starts a job's worker and gives back an
`Execution`, which streams the worker's event lines (`server.worker.protocol`) and can be stopped.

The pool keeps everything else, the same whatever the runner: the queue, the concurrency, time limits, cancelling,
decoding and validating the events, recording the outcome, and hashing the artifacts in the job's folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

__all__ = ["Execution", "Runner"]


class Execution(Protocol):
    """One job's worker, running."""

    def lines(self) -> Iterator[bytes]:
        """The worker's event lines (at most `protocol.MAX_LINE` + 1 bytes each, newline stripped), until it ends.

        Meanwhile the worker's stderr goes to the job's worker.log.
        """
        ...

    def kill(self) -> None:
        """Stop the worker and everything it started, now (any thread may call it, more than once): `lines` ends."""
        ...

    def wait(self) -> str | None:
        """Once `lines` has ended: None when the worker exited by itself with status 0, else how it ended (a signal,
        an exit status) in one line a person can act on."""
        ...


class Runner(Protocol):
    """Starts workers for jobs. `start` and `launch` are called by one thread of the pool (its dispatcher), which
    lives until every execution has ended; `stop` by any thread, once `launch` is no longer called."""

    def start(self) -> None:
        """Get ready for the first job (e.g. start workers ahead, so that a job does not wait for torch to import)."""
        ...

    def launch(self, folder: Path) -> Execution:
        """Hand the job in `folder` (job.json, its uploads; it writes out/) to a worker."""
        ...

    def stop(self) -> None:
        """Let go of the workers that have no job (the running ones are the pool's to stop)."""
        ...
