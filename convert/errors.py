"""Errors a user can act on, and what each kind of failure means for a command's exit status or a job's outcome.

Every message names the bad value and what to do instead, in the library's terms (option names as the
dataclass fields spell them); the CLI maps those names to its flags (`convert.cli.flags`).
"""

from __future__ import annotations

import dataclasses

__all__ = ["ConvertError", "Outcome", "ParityError", "one_line", "outcome_of"]


class ConvertError(ValueError):
    """A bad input or option. The CLI prints the message as one line and exits with status 2."""


class ParityError(ConvertError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance (or it fails to run)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a failure means to whoever ran the job: the CLI's exit status, the service's FailureKind name."""

    exit_code: int
    failure: str  # the proto's FailureKind name: BAD_INPUT | PARITY | WORKER (the service's view of a bug)
    label: str  # how the CLI introduces the message: "error" or "internal error"


BAD_INPUT = Outcome(2, "BAD_INPUT", "error")
PARITY = Outcome(3, "PARITY", "error")
DISTILL_NAN = Outcome(4, "BAD_INPUT", "error")  # a distillation whose loss was not finite (results written)
INTERRUPTED = Outcome(130, "WORKER", "interrupted")
INTERNAL = Outcome(1, "WORKER", "internal error")


def outcome_of(error: BaseException) -> Outcome:
    """The one mapping from an exception to its outcome, shared by the CLI and the service's workers."""
    if isinstance(error, ParityError):
        return PARITY
    if isinstance(error, ConvertError):
        return BAD_INPUT
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    return INTERNAL


def one_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, for embedding a library's error in ours."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
