"""Where the worker pool runs its jobs: the runner interface (`base`) and its implementations (`local`)."""

from server.runners.base import Execution, Runner
from server.runners.local import LocalRunner

__all__ = ["Execution", "LocalRunner", "Runner"]
