"""The timing harness both runtimes share: models alternating run by run after warm-up, and their statistics.

Method (as ONNX Runtime's perf tool and Olive do): warm-up runs not counted, then per-run perf_counter around
each run; the models alternate run by run so that drift on a shared machine hits them alike; percentiles by
nearest rank. A runner returns only once its run is finished on the device (ONNX Runtime synchronizes; the
PyTorch runtime synchronizes CUDA), so the time is the device's, not the launch's.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Sequence

import psutil

from convert.common import Progress
from convert.report.schema import Latency, ModelTiming, Speedup
from convert.runtime.config import DEFAULT_RUNS, DEFAULT_WARMUP, BenchConfig

__all__ = ["Runner", "latency_stats", "rss_bytes", "speedups", "time_batches", "time_side_by_side"]

Runner = Callable[[], object]  # one run of one model, finished on its device when it returns


def latency_stats(batch: int, seconds: Sequence[float]) -> Latency:
    """Percentiles by nearest rank (the smallest time that at least p% of the runs do not exceed), mean, min,
    population std (milliseconds) and throughput (items per second: batch / mean) of per-run times."""
    if not seconds:
        raise ValueError("no timed runs")
    ms = sorted(s * 1000.0 for s in seconds)

    def percentile(p: int) -> float:
        return ms[max(0, -(-p * len(ms) // 100) - 1)]  # rank ceil(p/100 * n), in integers

    mean = statistics.fmean(ms)
    return Latency(
        batch=batch,
        runs=len(ms),
        p50=percentile(50),
        p90=percentile(90),
        p99=percentile(99),
        mean=mean,
        min=ms[0],
        std=statistics.pstdev(ms),
        throughput=batch * 1000.0 / mean if mean > 0 else float("inf"),
    )


def time_side_by_side(
    runners: Sequence[Runner],
    *,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    duration: float | None = None,
    on_round: Callable[[float], None] | None = None,
) -> list[list[float]]:
    """Seconds per run of each runner, the runners alternating run by run after `warmup` untimed runs each.

    Args:
        runners: zero-argument functions, each one run of a model.
        warmup: untimed runs per runner.
        runs: timed runs per runner (unless `duration`).
        duration: time rounds for this many seconds (at least one round) instead of `runs` rounds.
        on_round: called after each round with the fraction done.
    """
    for run in runners:
        for _ in range(warmup):
            run()
    times: list[list[float]] = [[] for _ in runners]
    clock = time.perf_counter
    start = clock()
    was_enabled = gc.isenabled()
    gc.disable()  # a collection inside a timed run is not the model's time
    try:
        while True:
            for run, record in zip(runners, times, strict=True):
                begin = clock()
                run()
                record.append(clock() - begin)
            done = (clock() - start) / duration if duration is not None else len(times[0]) / runs
            if on_round is not None:
                on_round(min(done, 1.0))
            if done >= 1.0:
                return times
    finally:
        if was_enabled:
            gc.enable()


def time_batches(
    models: Sequence[ModelTiming],
    runners_at: Callable[[int], Sequence[Runner]],
    config: BenchConfig,
    notify: Progress,
) -> None:
    """Time the models side by side at each of `config.batch_sizes`, appending a Latency per batch size to each.

    Args:
        models: the records to fill, one per runner.
        runners_at: the runners (one per model, in the order of `models`) at a batch size.
        config: warm-up, runs or duration, batch sizes.
        notify: called with (what is running, fraction done).
    """
    for index, batch in enumerate(config.batch_sizes):

        def on_round(fraction: float, index: int = index, batch: int = batch) -> None:
            notify(f"timing batch {batch}", (index + fraction) / len(config.batch_sizes))

        times = time_side_by_side(
            runners_at(batch), warmup=config.warmup, runs=config.runs, duration=config.duration, on_round=on_round
        )
        for model, seconds in zip(models, times, strict=True):
            model.latency.append(latency_stats(batch, seconds))


def speedups(models: Sequence[ModelTiming], macs: Sequence[int | None] | None) -> list[Speedup]:
    """Every model after the first against the first, at each batch size (p50 over p50), beside the MAC ratio."""
    baseline = models[0]
    rows = []
    for index, model in enumerate(models[1:], start=1):
        ratio = None
        if macs and macs[0] and macs[index]:
            ratio = macs[0] / macs[index]
        for base, lat in zip(baseline.latency, model.latency, strict=True):
            speedup = base.p50 / lat.p50 if lat.p50 > 0 else float("inf")
            rows.append(Speedup(lat.batch, model.name, baseline.name, speedup, ratio, ratio and speedup / ratio))
    return rows


def rss_bytes() -> int:
    """Resident memory of this process, after glibc hands freed heap pages back to the OS: else memory freed
    earlier (e.g. by parsing the model) and reused by the session would hide its growth."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass
    return psutil.Process().memory_info().rss
