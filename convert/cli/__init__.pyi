"""The public names of `convert.cli` (imported on first use: see __init__.py)."""

from .commands import main

__all__ = ["main"]
