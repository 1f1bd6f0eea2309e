"""The Ray runner: each job runs as a Ray task on a node of a Ray cluster (`convert serve --runner ray`).

The server is a Ray driver. For each job it puts the job's files into the object store in chunks, and starts the
task of `server.runners.node` with the resources the job takes (`server.runners.resources`): the task runs the
worker there and streams back its event lines, then its results, which land in the job's folder here, where the
pool hashes and serves them as for a local job. Cancel kills the task (its worker dies with it); a node or a Ray
worker lost fails the job, or runs it once more when the job had not started yet. When the server dies, Ray kills
the tasks of its driver.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import exceptions as ray_errors

from convert.errors import ConvertError, one_line
from convert.job import JobOptions
from server.config import ServerConfig
from server.runners import node
from server.runners.base import Unsatisfiable
from server.runners.resources import Request, describe_nodes, request, shortfall
from server.worker.protocol import JOB_FILE, MAX_LINE, WORKER_LOG, LogLine, encode

__all__ = ["RayExecution", "RayRunner"]

logger = logging.getLogger(__name__)

_CHECK_EVERY = 5.0  # seconds between checks, while a job's task waits for a node, that some node can still run it
_BACKPRESSURE = 16  # items a task may send ahead of the server (each at most node.CHUNK bytes)
_INCOMING = ".incoming"  # in the job's folder: what the task sends back, moved into place once it has all come
_LOST = (ray_errors.NodeDiedError, ray_errors.WorkerCrashedError)  # a node, or the Ray worker of the task, died


class RayRunner:
    """Jobs as tasks on the nodes of the Ray cluster at `config.ray_address` (none: the local instance, or a new one).

    Args:
        config: the server's settings (ray_address, ray_cpus, worker_memory_mb, retry_unstarted).

    Raises:
        ConvertError: when the cluster cannot be reached.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        if not ray.is_initialized():
            try:
                ray.init(address=config.ray_address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = config.ray_address or "this machine"
                raise ConvertError(
                    f"cannot join the Ray cluster at {where} ({one_line(e)}): give --ray-address the HOST:6379 of "
                    "`ray start --head`, or start one there"
                ) from e
        self._task = ray.remote(max_retries=0)(node.run_on_node)

    def admit(self, options: JobOptions) -> None:
        job = request(options, self._config.ray_cpus)
        nodes = self.nodes()
        why = shortfall(job, nodes)
        if why is not None:
            raise Unsatisfiable(
                f"no node of the Ray cluster can ever run this job: {why}; the cluster has {describe_nodes(nodes)}. "
                "Ask for what a node has (`accelerator`, `resources`, threads, `device`), or add such a node"
            )

    def nodes(self) -> list[dict[str, float]]:
        """The total resources of each node alive."""
        return [dict(info["Resources"]) for info in ray.nodes() if info["Alive"]]

    def start(self) -> None:
        pass  # nothing ahead: a node starts the worker of a job when the job comes

    def launch(self, folder: Path) -> RayExecution:
        options = JobOptions.from_dict(json.loads((folder / JOB_FILE).read_text()))
        return RayExecution(self, folder, request(options, self._config.ray_cpus))

    def stop(self) -> None:
        pass  # no idle workers; the driver leaves the cluster when the server exits

    def submit(self, folder: Path, job: Request, files: list[tuple[str, list[Any]]]) -> Any:
        """Start the task of the job in `folder` (the generator of its items)."""
        options = job.task_options() | {"num_returns": "streaming", "scheduling_strategy": "SPREAD"}
        task = self._task.options(**options, _generator_backpressure_num_objects=_BACKPRESSURE)
        memory = self._config.worker_memory_mb
        return task.remote(folder.name, files, job.cpus, memory, job.placement())

    @property
    def retry_unstarted(self) -> bool:
        return self._config.retry_unstarted


class RayExecution:
    """One job's Ray task: its items become the worker's lines, and its results the job's files here."""

    def __init__(self, runner: RayRunner, folder: Path, job: Request) -> None:
        self._runner, self._folder, self._job = runner, folder, job
        self._lock = threading.Lock()
        self._killed = False
        self._status: str | None = "the Ray task ended without a result: see the server's log"
        self._placed: node.Placed | None = None
        self._lost: node.Placed | None = None  # where it was when a retry started it again
        self._started = False
        self._retried = False
        self._inputs = _put_files(folder)  # until the worker has started: a retry sends them again
        self._generator = runner.submit(folder, job, self._inputs)

    def lines(self) -> Iterator[bytes]:
        incoming = self._folder / _INCOMING
        shutil.rmtree(incoming, ignore_errors=True)
        ended = False
        while (item := self._next()) is not None:
            if isinstance(item, node.Line):
                yield item.data[: MAX_LINE + 1]
            elif isinstance(item, node.Placed):
                self._placed = item
            elif isinstance(item, node.Started):
                self._started, self._inputs = True, []
            elif isinstance(item, node.Chunk):
                _append(incoming, item)
            elif isinstance(item, node.Ended):
                self._status, ended = item.status, True
        if ended and incoming.is_dir():
            for entry in incoming.iterdir():  # the results replace what the folder had (nothing, for a new job)
                target = self._folder / entry.name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
                entry.rename(target)
        shutil.rmtree(incoming, ignore_errors=True)

    def kill(self) -> None:
        with self._lock:
            self._killed = True
            generator = self._generator
        ray.cancel(generator, force=True)  # the worker process on the node dies with the task (PR_SET_PDEATHSIG)

    def wait(self) -> str | None:
        return self._status

    def _next(self) -> node.Item | None:
        """The task's next item; None once it has ended (`_status` says how), or is lost (and not retried)."""
        while True:
            with self._lock:
                generator = self._generator
            ready, _ = ray.wait([generator], timeout=_CHECK_EVERY)
            if not ready:
                if self._placed is None and (why := shortfall(self._job, self._runner.nodes())) is not None:
                    self._status = f"no node of the Ray cluster can run the job any more ({why}): submit it again"
                    self.kill()  # its task waited for the node that had what it takes, and that node left
                continue
            try:
                return ray.get(next(generator))
            except StopIteration:
                return None
            except ray_errors.TaskCancelledError:
                return None  # the pool stopped it, and records why
            except _LOST as e:
                if self._retry():
                    where = self._where(lost=True)
                    return node.Line(
                        _log(f"warning: {where} was lost before the job started ({_cause(e)}): it runs again")
                    )
                self._status = f"{self._where()} was lost while it ran the job ({_cause(e)}): submit it again"
                return None
            except ray_errors.RayError as e:
                self._status = f"the job's Ray task failed ({one_line(e)}): see the server's log"
                logger.warning("job %s: %s", self._folder.name, e)
                return None

    def _retry(self) -> bool:
        """Start the task once more, when the job had not started and retries are on."""
        with self._lock:
            if self._started or self._retried or self._killed or not self._runner.retry_unstarted:
                return False
            self._retried, self._lost, self._placed = True, self._placed, None
            self._generator = self._runner.submit(self._folder, self._job, self._inputs)
            return True

    def _where(self, lost: bool = False) -> str:
        placed = self._lost if lost else self._placed
        if placed is None:
            return "the Ray node of the job"
        return f"the Ray node {placed.node[:12]} ({placed.host})"


def _put_files(folder: Path) -> list[tuple[str, list[Any]]]:
    """The job's files (job.json, its uploads) as chunks in the object store: this process holds one at a time."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.is_symlink() and (path.name == JOB_FILE or path.name.startswith("upload")):
            refs = []
            with open(path, "rb") as f:
                while chunk := f.read(node.CHUNK):
                    refs.append(ray.put(chunk))
            files.append((path.name, refs))
    return files


def _append(incoming: Path, chunk: node.Chunk) -> None:
    """Add a chunk to its file under `incoming`: only the files a task sends back, under plain names."""
    top, slash, name = chunk.path.partition("/")
    if slash:
        valid = top in node.RESULT_DIRS and name not in ("", ".", "..") and "/" not in name and "\0" not in name
    else:
        valid = top == WORKER_LOG
    if not valid:
        logger.warning("a Ray task sent back %r, which is not a result: dropped", chunk.path[:200])
        return
    path = incoming / chunk.path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(chunk.data)


def _log(text: str) -> bytes:
    return encode(LogLine(text)).encode()


def _cause(error: Exception) -> str:
    return f"{type(error).__name__}: {one_line(error)}"[:300]
