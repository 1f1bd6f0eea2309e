"""`python -m convert.cli` (torchrun launches it this way)."""

from convert.cli.entry import run

__all__: list[str] = []

run()
