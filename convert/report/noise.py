"""When a benchmark's times are noise: a high coefficient of variation, or a long tail (p90 far above p50).

Reference: ONNX Runtime's perf tool and pyperf both report the spread beside the median and flag unstable runs;
the thresholds here are the issue's (CV above 25%, p90 above 2x p50).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the schema's renderers import this module
    from convert.report.schema import Latency, ModelTiming

__all__ = ["NOISY_CV", "NOISY_TAIL", "coefficient_of_variation", "noise", "noise_notes"]

NOISY_CV = 0.25  # std / mean above this: runs differ too much for their median to compare
NOISY_TAIL = 2.0  # p90 above this many times p50: a tail of slow runs (other load, frequency scaling)


def coefficient_of_variation(latency: Latency) -> float:
    """std / mean of the timed runs (0 for a mean of 0)."""
    return latency.std / latency.mean if latency.mean > 0 else 0.0


def noise(latency: Latency) -> str | None:
    """Why these times are noise ("coefficient of variation 42%", "p90 2.3x p50"), or None when they are not."""
    reasons = []
    cv = coefficient_of_variation(latency)
    if cv > NOISY_CV:
        reasons.append(f"coefficient of variation {cv:.0%}")
    if latency.p50 > 0 and latency.p90 > NOISY_TAIL * latency.p50:
        reasons.append(f"p90 {latency.p90 / latency.p50:.1f}x p50")
    return ", ".join(reasons) or None


def noise_notes(models: Sequence[ModelTiming]) -> list[str]:
    """A note per model and batch size whose times are noise (for Benchmark.notes, hence report.json)."""
    notes = []
    for model in models:
        for latency in model.latency:
            why = noise(latency)
            if why is not None:
                notes.append(
                    f"noisy timing: {model.name} at batch {latency.batch} ({why}): its latency and speedup are "
                    "unreliable; time longer, on a quieter machine"
                )
    return notes
