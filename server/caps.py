"""What the service accepts of a job's options: a cap on each count, size and duration a client could set beyond
reason (a billion benchmark runs, a 2^40-element input), and the regexes compiled at Submit, so that such a job
is refused there (INVALID_ARGUMENT) rather than failing, or running for days, in a worker."""

from __future__ import annotations

import math
import re

from convert.errors import ConvertError
from convert.job import JobOptions

__all__ = ["CAPS", "MAX_INPUTS", "MAX_INPUT_ELEMENTS", "MAX_REGEX", "check_caps"]

MAX_INPUTS = 16  # example inputs of one model
MAX_INPUT_ELEMENTS = 1 << 28  # elements of one example input (1 GiB of float32)
MAX_REGEX = 1000  # characters of `include` or `exclude`
# (part of JobOptions, field) -> the largest value a job may ask for, and its unit for the message.
CAPS: dict[tuple[str, str], tuple[float, str]] = {
    ("bench", "runs"): (100_000, "runs"),
    ("bench", "warmup"): (10_000, "runs"),
    ("bench", "duration"): (600.0, "seconds"),
    ("bench", "threads"): (1024, "threads"),
    ("auto", "runs"): (10_000, "runs"),
    ("auto", "warmup"): (10_000, "runs"),
    ("auto", "threads"): (1024, "threads"),
    ("auto", "max_candidates"): (64, "candidates"),
    ("distill.config", "steps"): (1_000_000, "steps"),
    ("distill.config", "epochs"): (10_000.0, "epochs"),
    ("distill.config", "batch_size"): (65_536, "inputs"),
    ("distill.config", "eval_every"): (1_000_000, "steps"),
}
_BATCH_SIZES = (16, 65_536)  # batch sizes to benchmark at most, and the largest one


def check_caps(options: JobOptions) -> None:
    """Refuse options beyond the service's caps, naming every one (in library terms) and its cap.

    Raises:
        ConvertError: with all the options over their caps.
    """
    over = []
    for (part, name), (cap, unit) in CAPS.items():
        value = _part(options, part)
        value = None if value is None else getattr(value, name)
        if value is not None and not value <= cap:
            over.append(f"`{name}` {value:g} (at most {cap:g} {unit})")
    shapes = options.input_shapes or ()
    if len(shapes) > MAX_INPUTS:
        over.append(f"{len(shapes)} `input_shapes` (at most {MAX_INPUTS} inputs)")
    for shape in shapes:
        if math.prod(shape) > MAX_INPUT_ELEMENTS:
            over.append(f"`input_shapes` {'x'.join(map(str, shape))} (at most {MAX_INPUT_ELEMENTS} elements)")
    if options.bench is not None:
        sizes = options.bench.batch_sizes
        if len(sizes) > _BATCH_SIZES[0] or max(sizes, default=1) > _BATCH_SIZES[1]:
            over.append(f"`batch_sizes` {list(sizes)[:20]} (at most {_BATCH_SIZES[0]}, each {_BATCH_SIZES[1]} or less)")
    for name in ("include", "exclude"):
        pattern = getattr(options.config, name)
        if pattern is None:
            continue
        if len(pattern) > MAX_REGEX:
            over.append(f"`{name}` of {len(pattern)} characters (at most {MAX_REGEX})")
            continue
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConvertError(
                f"`{name}` {pattern[:80]!r} is not a valid regex ({e}): fix it, or leave it out"
            ) from None
    if over:
        raise ConvertError(f"this server does not run jobs with {'; '.join(over)}: ask for less")


def _part(options: JobOptions, path: str):
    value = options
    for name in path.split("."):
        value = getattr(value, name, None)
        if value is None:
            return None
    return value
