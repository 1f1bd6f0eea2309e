"""Time the conversion itself (trace, find, plan, factorize, rewrite, verify, report) on torchvision models.

Prints the median of several runs per model and stage; interpreter start and model construction are not
counted. The target (issue 2): ResNet-50 to rank-1 separable in under 2 s on a 2-core machine.

    .venv/bin/python benchmarks/bench_convert.py [--models resnet50 resnet18] [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchvision

from convert import ConvertConfig, convert_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "resnet18"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, {machine}, {args.threads} threads")
    print("| model | target | median s | min s | stages (median s) | MACs ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model = getattr(torchvision.models, name)().eval()
        example = torch.randn(1, 3, 224, 224)
        for config in (ConvertConfig(target="separable"), ConvertConfig(target="grouped", groups=4)):
            convert_model(model, example, config)  # warm-up: first-call costs of torch and fx
            walls, stages = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = convert_model(model, example, config)
                walls.append(time.perf_counter() - start)
                stages.append(result.report.seconds)
            per_stage = {key: statistics.median(s[key] for s in stages) for key in stages[0]}
            totals = result.report.totals
            print(
                f"| {name} | {config.target}{'' if config.groups is None else f' g{config.groups}'} "
                f"| {statistics.median(walls):.3f} | {min(walls):.3f} "
                f"| {', '.join(f'{k} {v:.3f}' for k, v in per_stage.items())} "
                f"| {totals.macs_before / totals.macs_after:.2f}x |"
            )


if __name__ == "__main__":
    main()
