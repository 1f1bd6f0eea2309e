"""Errors a user can act on: every message names the bad value and what to do instead."""


class ConvertError(ValueError):
    """A bad input or option. The CLI prints the message as one line and exits with status 2."""
