"""Where the worker pool runs its jobs: the runner interface (`base`) and its implementations: `local` (worker
processes of this machine) and `ray` (tasks on the nodes of a Ray cluster, each running `node`)."""

from convert.errors import ConvertError
from server.config import ServerConfig
from server.runners.base import Execution, Runner, Unsatisfiable
from server.runners.local import LocalRunner

__all__ = ["Execution", "LocalRunner", "Runner", "Unsatisfiable", "make_runner"]


def make_runner(config: ServerConfig) -> Runner:
    """The runner `config.runner` names.

    Raises:
        ConvertError: for the Ray runner, when Ray is not installed or its cluster cannot be reached.
    """
    if config.runner == "ray":
        try:
            from server.runners.ray import RayRunner  # Ray is an optional dependency: imported when asked for
        except ImportError as e:
            raise ConvertError(
                f"--runner ray needs Ray ({e}): pip install 'convert[ray]', or use --runner local"
            ) from e
        return RayRunner(config)
    return LocalRunner(config)
