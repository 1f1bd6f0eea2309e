"""The `convert` command line: parse arguments, call the library, print."""

from convert.cli.commands import main

__all__ = ["main"]
