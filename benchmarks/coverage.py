"""Coverage table: every model of the zoo (tests/zoo_models.py) through the whole pipeline, as Markdown.

Per model: trace path; convs found, converted and skipped (with the reasons) at rank 1; parameters and MACs
before/after at rank 1; the full-rank output error (converted vs original, float32, max |diff| / max |original|
over the outputs) beside the original's own float32 error (float32 vs float64, the same measure); ONNX Runtime
parity (max relative difference, full rank and rank 1, static shapes); the wall time of the rank-1 conversion
(median of 3).

    .venv/bin/python benchmarks/coverage.py [--models resnet18 ...] [--threads 2] [--include-grouped]
"""

from __future__ import annotations

import argparse
import collections
import copy
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from zoo_models import ZOO

from convert import ConvertConfig, OnnxConfig, convert_model, export_onnx
from convert.report.text import format_count
from convert.surgery.verify import run_model, tensors_of

REPEATS = 3  # rank-1 conversions timed per model (median)
# Short names for the reasons a conv is skipped (the report has them in full).
REASONS = {"1x1 conv": "1x1", "already depthwise": "depthwise", "already grouped": "grouped"}


def max_rel(reference: object, candidate: object) -> float:
    """max |candidate - reference| / max |reference|, worst output."""
    return max(
        float((c.double() - r.double()).abs().max() / r.double().abs().max())
        for r, c in zip(tensors_of(reference), tensors_of(candidate), strict=True)
    )


def reasons(report) -> str:
    counts = collections.Counter(
        next((short for prefix, short in REASONS.items() if layer.reason.startswith(prefix)), layer.reason)
        for layer in report.layers
        if layer.status == "skipped"
    )
    return ", ".join(f"{reason} {count}" for reason, count in counts.most_common()) or "-"


def row(name: str, folder: Path, include_grouped: bool) -> str:
    spec = ZOO[name]
    model, inputs = spec.model(), spec.inputs()
    expected = run_model(model, inputs)
    exact = run_model(copy.deepcopy(model).double(), [t.double() for t in inputs])
    full = convert_model(model, inputs, ConvertConfig(rank="full", include_grouped=include_grouped))
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        low = convert_model(model, inputs, ConvertConfig(rank=1, include_grouped=include_grouped))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    parity = []
    for label, result in (("full", full), ("rank1", low)):
        export = export_onnx(
            result.model, inputs, folder / f"{name}-{label}.onnx", OnnxConfig(dynamic_batch=False), strict=False
        )
        parity.append(f"{export.parity[0].max_rel:.0e}" + ("" if export.passed else " (fail)"))
    report, totals = low.report, low.report.totals
    shape = "x".join(map(str, spec.shape[1:]))
    return (
        f"| {name} | {shape} | {report.trace} | {len(report.layers)} / {totals.converted} / {totals.skipped} "
        f"| {reasons(report)} | {format_count(totals.params_before)} -> {format_count(totals.params_after)} "
        f"| {format_count(totals.macs_before)} -> {format_count(totals.macs_after)} "
        f"| {max_rel(expected, run_model(full.model, inputs)):.1e} | {max_rel(exact, expected):.1e} "
        f"| {' / '.join(parity)} | {seconds:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO), metavar="NAME")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--include-grouped", action="store_true", help="factorize grouped convs too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    machine = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"{machine}, {args.threads} threads\n"
    )
    print(
        "| model | input | trace | convs found / converted / skipped | skipped because | params (rank 1) "
        "| MACs (rank 1) | full-rank error | original's float32 error | ONNX parity full / rank 1 "
        "| rank-1 conversion s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            print(row(name, Path(folder), args.include_grouped), flush=True)


if __name__ == "__main__":
    main()
