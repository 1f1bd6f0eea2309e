"""The few helpers every stage uses: example inputs as a tuple, and progress callbacks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Inputs", "Progress", "as_inputs", "no_progress", "span"]

Inputs = Sequence[torch.Tensor] | torch.Tensor  # one example input, or one per positional argument
Progress = Callable[[str, float], None]  # (what is running, fraction of this stage done, 0..1)


def as_inputs(example_inputs: Inputs | None) -> tuple[torch.Tensor, ...]:
    """One tensor or a sequence of positional inputs -> a tuple of tensors (None -> empty)."""
    if example_inputs is None:
        return ()
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def no_progress(_what: str, _fraction: float) -> None:
    """The progress callback of a caller that wants none."""


def span(notify: Progress, start: float, end: float) -> Progress:
    """A progress callback whose 0..1 fills [start, end] of `notify`'s."""
    return lambda what, fraction: notify(what, start + (end - start) * min(max(fraction, 0.0), 1.0))
