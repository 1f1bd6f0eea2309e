"""Where the worker pool runs its jobs: the runner interface (`base`) and its implementations: `local` (worker
processes of this machine) and `ray` (tasks on the nodes of a Ray cluster, each running `node`)."""

from convert.errors import ConvertError
from server.config import ServerConfig
from server.runners.base import Execution, Runner, Unsatisfiable
from server.runners.local import LocalRunner
from server.sandbox import Sandbox

__all__ = ["Execution", "LocalRunner", "Runner", "Unsatisfiable", "make_runner"]


def make_runner(config: ServerConfig, sandbox: Sandbox | None = None) -> Runner:
    """The runner `config.runner` names; the local one runs its workers in `sandbox` when there is one.

    Raises:
        ConvertError: for the Ray runner, when Ray is not installed or its cluster cannot be reached, or when
            uploaded code would run on its nodes unsandboxed without the operator's --trust-uploaded-code.
    """
    if config.runner == "ray":
        if config.allow_untrusted_code and not config.trust_uploaded_code:
            raise ConvertError(
                "--runner ray runs uploaded code on its nodes without a sandbox: add --trust-uploaded-code (it then "
                "runs as the nodes' user), or use --runner local (sandboxed with bubblewrap)"
            )
        try:
            from server.runners.ray import RayRunner  # Ray is an optional dependency: imported when asked for
        except ImportError as e:
            raise ConvertError(
                f"--runner ray needs Ray ({e}): pip install 'convert[ray]', or use --runner local"
            ) from e
        return RayRunner(config)
    return LocalRunner(config, sandbox=sandbox)
