"""Conversion options: one frozen dataclass shared by the CLI, the library API and the service."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from convert.errors import ConvertError

__all__ = [
    "ConvertConfig",
    "DEFAULT_MIN_CHANNELS",
    "DEFAULT_SEPARABLE_RANK",
    "Target",
    "TARGETS",
    "TRANSPOSED_FORMS",
    "TransposedForm",
]

Target = Literal["separable", "grouped", "auto"]
TARGETS: tuple[str, ...] = ("separable", "grouped", "auto")
TransposedForm = Literal["skip", "separable"]
TRANSPOSED_FORMS: tuple[str, ...] = ("skip", "separable")

DEFAULT_SEPARABLE_RANK = 1  # the classic MobileNet block: one depthwise filter per input channel
DEFAULT_MIN_CHANNELS = 1


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """What to convert and into what. Override fields with `dataclasses.replace`."""

    # "separable": depthwise kxk (depth multiplier = rank) + pointwise 1x1.
    # "grouped": grouped kxk conv (`groups` groups, `rank` channels each) + pointwise 1x1.
    # "auto": per layer, whatever convert.auto.planner.plan_for_speed measured to be fast enough (passed as `plans`).
    target: Target = "separable"
    # Channels per group of the first conv: an int, "full" (smallest exact rank), or None for the target's
    # default (1 for separable; C_out / groups for grouped). Clamped to full rank, and the report says so.
    rank: int | Literal["full"] | None = None
    # Per layer, the smallest rank keeping at least this fraction of spectral energy (0 < energy <= 1).
    # Mutually exclusive with `rank`.
    energy: float | None = None
    # Number of groups for target "grouped" (must divide C_in; and C_out when pointwise=False).
    groups: int | None = None
    # Target "grouped" only: False keeps just W's block diagonal as one plain grouped conv (lossy).
    pointwise: bool = True
    # Only layers whose name matches this regex (re.search) are candidates.
    include: str | None = None
    # Layers whose name matches this regex (re.search) are skipped.
    exclude: str | None = None
    # Layers with fewer input or output channels than this are skipped.
    min_channels: int = DEFAULT_MIN_CHANNELS
    # Transposed convs: "separable" makes each a depthwise transposed conv + pointwise 1x1 (whatever `target`
    # says; rank as for the other layers, default 1); "skip" leaves them as they are.
    transposed: TransposedForm = "separable"
    # Convs that are grouped already (1 < groups < C_in): True factorizes each of their groups (the 1x1 conv
    # keeps their groups); False skips them. Depthwise convs are always skipped.
    include_grouped: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConvertError(f"unknown target {self.target!r}: use one of {', '.join(TARGETS)}")
        if self.rank is not None and self.energy is not None:
            raise ConvertError("give either a rank or an energy, not both")
        if self.rank is not None and self.rank != "full" and (not isinstance(self.rank, int) or self.rank < 1):
            raise ConvertError(f"rank {self.rank!r} is not valid: use a positive integer or 'full'")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ConvertError(f"energy {self.energy} is not valid: use a fraction in (0, 1], e.g. 0.95")
        if self.target == "auto" and (self.rank is not None or self.energy is not None or self.groups is not None):
            raise ConvertError(
                "`target`=auto chooses ranks and groups per layer itself: drop `rank`, `energy`, `groups`"
            )
        if self.target == "grouped" and self.groups is None:
            raise ConvertError("`target`=grouped needs the number of groups: set `groups` (e.g. `groups`=4)")
        if self.groups is not None and self.groups < 1:
            raise ConvertError(f"groups {self.groups} is not valid: use a positive integer")
        if self.target == "separable" and self.groups is not None:
            raise ConvertError("`groups` applies to `target`=grouped only (separable uses one group per channel)")
        if not self.pointwise and self.target != "grouped":
            raise ConvertError("`pointwise`=False applies to `target`=grouped only")
        if self.transposed not in TRANSPOSED_FORMS:
            raise ConvertError(f"unknown transposed form {self.transposed!r}: use one of {', '.join(TRANSPOSED_FORMS)}")
        if self.min_channels < 1:
            raise ConvertError(f"min_channels {self.min_channels} is not valid: use a positive integer")
        for name in ("include", "exclude"):
            _check_regex(name, getattr(self, name))


def _check_regex(name: str, pattern: str | None) -> None:
    """Refuse a layer-name filter that is not a regular expression, naming where it breaks."""
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConvertError(
            f"`{name}` {pattern!r} is not a valid regular expression ({e}): escape special characters, "
            r"e.g. 'layer1\.0' or 'conv\[0\]'"
        ) from e
