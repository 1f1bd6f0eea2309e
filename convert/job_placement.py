"""Where a job may ask to run on a Ray cluster: the checks of its `accelerator` type and custom `resources`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from convert.errors import ConvertError

__all__ = ["RESERVED_RESOURCES", "check_accelerator", "checked_resources"]

# Names of Ray resources that a job may not ask for by name: the service derives them from the job's options.
RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")


def checked_resources(given: Mapping[str, float] | Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """`resources` as sorted (name, amount) pairs, each checked.

    Raises:
        ConvertError: for a name that is no custom resource (or one the service derives), an amount that is not
            positive, or a name given twice.
    """
    pairs = sorted((given.items() if isinstance(given, Mapping) else given), key=lambda pair: pair[0])
    for name, amount in pairs:
        if not isinstance(name, str) or not _RESOURCE_NAME.fullmatch(name) or name in RESERVED_RESOURCES:
            raise ConvertError(
                f"`resources` name {name!r} is not valid: use a Ray custom resource of the nodes (letters, digits, "
                "'_.:-'), not CPU, GPU or memory (those follow from the job's options)"
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount <= 1e6:
            raise ConvertError(f"`resources` {name}={amount!r} is not valid: use a positive amount, e.g. {name}=1")
    if len({name for name, _ in pairs}) != len(pairs):
        raise ConvertError("`resources` names a resource twice: give each once")
    return tuple((name, float(amount)) for name, amount in pairs)


def check_accelerator(name: str) -> None:
    """Refuse an `accelerator` that cannot be a Ray accelerator type.

    Raises:
        ConvertError: naming a valid form.
    """
    if not _RESOURCE_NAME.fullmatch(name):
        raise ConvertError(f"`accelerator` {name!r} is not a Ray accelerator type: use a name such as H100 or A10G")
