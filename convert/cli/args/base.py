"""The parser class of every `convert` command and the arguments they all share (messages, --version)."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import NoReturn

from convert.errors import BAD_INPUT

__all__ = ["LOG_LEVELS", "Parser", "examples", "logging_arguments", "switch", "version"]

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (the full usage is one --help away); epilogs (the
    examples) keep their lines."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(BAD_INPUT.exit_code, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed package's version (or "unknown" when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("convert")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def switch(group: argparse._ActionsContainer, *names: str, help: str) -> None:
    """An on/off flag (`store_true`, default False), the most common kind of option."""
    group.add_argument(*names, action="store_true", help=help)


def logging_arguments(parser: argparse.ArgumentParser) -> None:
    """How much a command says on stderr, and its version: what every subcommand shares."""
    group = parser.add_argument_group("messages")
    loudness = group.add_mutually_exclusive_group()
    switch(loudness, "-v", "--verbose", help="log details and show tracebacks")
    switch(
        loudness,
        "-q",
        "--quiet",
        help="no progress bar, notes or warnings on stderr: results on stdout, errors on stderr",
    )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="the libraries' log level on stderr (default: info with --verbose, else warning)",
    )
    group.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def examples(*lines: str) -> str:
    """An epilog of example command lines."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
