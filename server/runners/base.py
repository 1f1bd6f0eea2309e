"""The interface between the worker pool and where its jobs run: a `Runner` starts a job's worker and gives back an
`Execution`, which streams the worker's event lines (`server.worker.protocol`) and can be stopped.

The pool keeps everything else, the same whatever the runner: the queue, the concurrency, time limits, cancelling,
decoding and validating the events, launching a job again whose worker ended before its Ready event (it never
took the job: a spare that died while it waited), recording the outcome, and moving out/ from the job's folder to
the server's own before hashing the artifacts there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

__all__ = ["Execution", "Runner"]


class Execution(Protocol):
    """One job's worker, running."""

    def lines(self) -> Iterator[bytes]:
        """The worker's event lines (at most `protocol.MAX_LINE` + 1 bytes each, newline stripped), until it ends:
        Ready once the worker has taken the job, then its progress and outcome. The pool counts the job's time
        limit from Ready, and launches a job again (on a fresh worker, a few times at most) whose lines end
        without it: a runner must relay the worker's Ready line as it came.

        Meanwhile the worker's stderr goes to the job's worker.log (as long as the disk takes it: a write that
        fails must not end the lines). The pool closes the iterator when it stops reading early.
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
        """Hand the job in `folder` (job.json, its uploads; it writes out/) to a worker. A worker found dead here
        is replaced; one that dies after this call ends its execution without Ready."""
        ...

    def stop(self) -> None:
        """Let go of the workers that have no job (the running ones are the pool's to stop)."""
        ...
