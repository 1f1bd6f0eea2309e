"""The `convert` command line: commands (subcommands -> run), args, options, flags, output, remote (the service),
entry (the executable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from convert.cli.commands import main

__all__ = ["main"]


def __getattr__(name: str) -> object:
    """`main` on first use (PEP 562): `convert.cli.entry` starts without torch, so a Ctrl-C while it loads is caught."""
    if name == "main":
        from convert.cli.commands import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
