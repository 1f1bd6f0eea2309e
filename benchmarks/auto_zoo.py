"""`--to auto` over the torchvision zoo of the coverage suite: every model plans, converts, exports and runs.

Prints a table for BENCHMARKS.md: model, convs planned / factorized, predicted and measured speedup, output
error (random weights: errors mean little here), ONNX parity (the worse of the two exports), planning time.
Quick settings (few timed runs, 4 candidates per layer) so that the whole zoo takes minutes; the latency cache
is shared by the models.

    .venv/bin/python benchmarks/auto_zoo.py [--target 1.5] [--threads 2] [--models resnet18 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from zoo_models import ZOO

from convert import AutoConfig, BenchConfig, ConvertConfig, benchmark_onnx, convert_model, export_onnx
from convert.auto.planner import plan_for_speed
from convert.runtime.export import OnnxConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(ZOO))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print("| model | planned | factorized | predicted | measured | output rel. error | ONNX parity | plan s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="auto-zoo-") as folder:
        config = AutoConfig(
            target_speedup=args.target, device="cpu", threads=args.threads, runs=5, warmup=2, max_candidates=4,
            cache_dir=str(Path(folder) / "cache"),
        )  # fmt: skip
        for name in args.models:
            entry = ZOO[name]
            model, inputs = entry.model(), entry.inputs()
            try:
                start = time.perf_counter()
                plan = plan_for_speed(model, inputs, config)
                seconds = time.perf_counter() - start
                result = convert_model(model, inputs, ConvertConfig(target="auto"), plans=plan.plans)
                paths, parity = [], 0.0
                for i, m in enumerate((model, result.model)):
                    paths.append(Path(folder) / f"{name}-{i}.onnx")
                    export = export_onnx(m, inputs, paths[-1], OnnxConfig(dynamic_batch=False), strict=False)
                    parity = max(parity, *(p.max_rel for p in export.parity))
                timing = benchmark_onnx(paths, BenchConfig(device="cpu", threads=args.threads, runs=20, warmup=3))
                report = plan.report
                factorized = sum(1 for layer in report.layers if layer.chosen != 0)
                print(
                    f"| {name} | {len(report.layers)} | {factorized} | {report.predicted_speedup:.2f}x | "
                    f"{timing.speedup[0].speedup:.2f}x | {result.report.output_rel_error:.3g} | {parity:.1g} | "
                    f"{seconds:.0f} |",
                    flush=True,
                )
            except Exception as e:  # noqa: BLE001 - a row per model, whatever happens
                print(f"| {name} | failed: {type(e).__name__}: {str(e)[:150]} | | | | | | |", flush=True)


if __name__ == "__main__":
    main()
