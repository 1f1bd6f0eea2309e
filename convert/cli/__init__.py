"""The `convert` command line: arguments -> the library's options -> a job, here or on a server -> what is printed.

`commands` maps each subcommand to its parser (`args`) and run function; `options` turns parsed arguments into
JobOptions; `flags` is the one table of option names and flags; `output` prints; `remote` talks to the service.
"""

from convert.cli.commands import main

__all__ = ["main"]
