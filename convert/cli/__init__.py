"""The `convert` command line: commands (subcommands -> run), args, options, flags, output, remote (the service)."""

from convert.cli.commands import main

__all__ = ["main"]
