"""The `convert` command line: commands (subcommands -> run), args, options, flags, output, remote (the service),
entry (the executable)."""

import lazy_loader

# `main` on first use, from __init__.pyi: `convert.cli.entry` starts without torch, so a Ctrl-C while it loads is
# caught
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
