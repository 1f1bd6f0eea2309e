"""Errors a user can act on: every message names the bad value and what to do instead."""


class ConvertError(ValueError):
    """A bad input or option. The CLI prints the message as one line and exits with status 2."""


def one_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, for embedding a library's error in ours."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
