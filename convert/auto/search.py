"""The plan search of `--to auto`: per layer one candidate, the least total error within a latency budget (a
multiple-choice knapsack, by dynamic programming over latency), and the trade-off frontier for the plot."""

from __future__ import annotations

import math

import numpy as np

from convert.report.schema import AutoLayer, Candidate

__all__ = ["BINS", "search"]

BINS = 2000  # latency resolution of the plan search: the budget in this many steps


def _price(candidate: Candidate, lam: float) -> float:
    return candidate.output_error**2 + lam * candidate.latency_ms


def search(rows: list[AutoLayer], budget_ms: float) -> tuple[list[int], list[list[float]]]:
    """Per layer, the candidate index of the least-error plan within `budget_ms` of conv time (else the
    fastest plan), and the frontier of plans a Lagrangian sweep visits: [conv ms, sqrt(sum error^2)].

    The choice is a multiple-choice knapsack solved by dynamic programming over latency in BINS steps of
    the budget (each latency rounded to the nearest step: far finer than the timing noise); the Lagrangian
    sweep only reaches the convex hull of the plans and draws the frontier.
    """

    def pick(lam: float) -> list[int]:
        return [min(range(len(r.candidates)), key=lambda j, r=r: _price(r.candidates[j], lam)) for r in rows]

    def cost(choice: list[int]) -> tuple[float, float]:
        ms = sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True))
        error = math.sqrt(sum(r.candidates[j].output_error ** 2 for r, j in zip(rows, choice, strict=True)))
        return ms, error

    fastest = [min(range(len(r.candidates)), key=lambda j, r=r: r.candidates[j].latency_ms) for r in rows]
    best = _knapsack(rows, budget_ms) if cost(fastest)[0] <= budget_ms else None
    frontier = sorted({cost(pick(10 ** (e / 4))) for e in range(-48, 25)} | {cost(fastest)})
    return best or fastest, [[ms, error] for ms, error in frontier]  # fastest: out of reach, the caller says so


def _knapsack(rows: list[AutoLayer], budget_ms: float) -> list[int] | None:
    """The least sum of output_error^2 with the latencies' sum within the budget: dynamic programming
    over latency in steps of budget / BINS (rounded to the nearest step, with room for the rounding; of the
    resulting plans, the best whose true sum fits is taken)."""
    if budget_ms <= 0:
        return None
    step = budget_ms / BINS
    size = BINS + len(rows) + 1  # each rounding adds at most half a step
    least = np.full(size, np.inf)  # least[b]: the least error of the layers so far using b steps
    least[0] = 0.0
    picks = []
    for r in rows:
        new, pick = np.full(size, np.inf), np.zeros(size, dtype=np.int64)
        for j, c in enumerate(r.candidates):
            n = round(c.latency_ms / step)
            if n >= size:
                continue
            shifted = np.full(size, np.inf)
            shifted[n:] = least[: size - n] + c.output_error**2
            better = shifted < new
            new[better], pick[better] = shifted[better], j
        least = new
        picks.append(pick)
    for end in np.argsort(least, kind="stable"):
        if not np.isfinite(least[end]):
            return None
        b, choice = int(end), []
        for r, pick in zip(reversed(rows), reversed(picks), strict=True):
            choice.append(int(pick[b]))
            b -= round(r.candidates[choice[-1]].latency_ms / step)
        choice.reverse()
        if sum(r.candidates[j].latency_ms for r, j in zip(rows, choice, strict=True)) <= budget_ms * (1 + 1e-12):
            return choice
    return None
