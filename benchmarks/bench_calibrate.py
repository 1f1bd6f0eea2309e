"""Calibration recovers a rank-1 separable conversion without training: agreement with the teacher, output error.

The teacher is bench_distill.py's CNN, trained on its generated 10-class image task on the CPU. Then the rank-1
depthwise-separable conversion from the weight SVD alone, and calibrated (`convert_model(..., calibration=...)`) on
N unlabeled real inputs for each N of --samples; accuracy, top-1 agreement with the teacher and the output rel.
error are measured on held-out test inputs that neither the teacher nor calibration saw.
Target (issue 15): >= 95% agreement and an output error >= 10x lower than the weight SVD's.

    PYTHONPATH=. python benchmarks/bench_calibrate.py [--threads 2] [--samples 256,1024]

With --resnet50 N: instead, the wall time of calibrating torchvision's ResNet-50 (random weights, 224x224,
rank-1 separable) on N random inputs, split into the conversion alone and the calibration (target: < 30 s on 256).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import make_images, predictions, teacher_cnn, train_teacher

from convert import CalibrationConfig, ConvertConfig, convert_model
from convert.auto import AutoConfig, LatencyPlanner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--samples", default="256,1024", help="calibration input counts, comma-separated")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--teacher-inputs", type=int, default=10000)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, help="the teacher's state dict: read if it exists, else trained there")
    parser.add_argument(
        "--each-layer", action="store_true", help="also each conv alone in the rank-1 form, weight SVD and calibrated"
    )
    parser.add_argument(
        "--auto", type=float, metavar="SPEEDUP", help="also --to auto at this speedup, with and without calibration"
    )
    parser.add_argument("--resnet50", type=int, metavar="N", help="time ResNet-50's calibration on N inputs instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, {machine}, {args.threads} threads")
    if args.resnet50:
        time_resnet50(args.resnet50)
        return
    train_x, train_y = make_images(args.teacher_inputs, seed=1)
    unlabeled, _ = make_images(max(int(n) for n in args.samples.split(",")), seed=2)
    test_x, test_y = make_images(args.test, seed=3)
    clock = time.perf_counter()
    if args.teacher is not None and args.teacher.exists():
        teacher = teacher_cnn()
        teacher.load_state_dict(torch.load(args.teacher))
        teacher.eval()
        print(f"teacher read from {args.teacher}")
    else:
        teacher = train_teacher(train_x, train_y, args.teacher_epochs, args.seed)
        print(f"teacher trained in {time.perf_counter() - clock:.0f} s")
        if args.teacher is not None:
            torch.save(teacher.state_dict(), args.teacher)
    teacher_pred = predictions(teacher, test_x)
    with torch.no_grad():
        reference = teacher(test_x)
    config = ConvertConfig(target="separable", rank=args.rank)
    rows = [("teacher", teacher, None)]
    rows.append((f"rank-{args.rank} separable, weight SVD", convert_model(teacher, test_x[:1], config).model, None))
    for samples in (int(n) for n in args.samples.split(",")):
        clock = time.perf_counter()
        calibration = CalibrationConfig(unlabeled[:samples], samples=samples)
        result = convert_model(teacher, test_x[:1], config, calibration=calibration)
        rows.append((f"calibrated on {samples} real inputs", result.model, time.perf_counter() - clock))
    if args.each_layer:  # what the rank-1 form of each conv alone costs: the ceiling calibration cannot lift
        names = [name for name, module in teacher.named_modules() if isinstance(module, torch.nn.Conv2d)]
        calibration = CalibrationConfig(unlabeled, samples=len(unlabeled))
        for name in names:
            alone = dataclasses.replace(config, include=f"^{name}$")
            rows.append((f"conv {name} alone, weight SVD", convert_model(teacher, test_x[:1], alone).model, None))
            result = convert_model(teacher, test_x[:1], alone, calibration=calibration)
            rows.append((f"conv {name} alone, calibrated on {len(unlabeled)}", result.model, None))
    if args.auto:  # the plan's candidates measured with weight-SVD factors on the example, or whitened on real inputs
        auto_config = ConvertConfig(target="auto")
        planner = LatencyPlanner(AutoConfig(target_speedup=args.auto, threads=args.threads))
        calibration = CalibrationConfig(unlabeled, samples=len(unlabeled))
        for name, given in (("uncalibrated", None), (f"calibrated on {len(unlabeled)}", calibration)):
            clock = time.perf_counter()
            result = convert_model(teacher, test_x[:1], auto_config, planner=planner, calibration=given)
            auto = result.report.auto
            forms = ", ".join(f"{row.name}: {row.candidates[row.chosen].label}" for row in auto.layers)
            label = f"--to auto {args.auto:g}x, {name} (predicted {auto.predicted_speedup:.2f}x; {forms})"
            rows.append((label, result.model, time.perf_counter() - clock))
    print("\n| model | test accuracy | top-1 agreement | output rel. error (test) | convert wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, model, seconds in rows:
        pred = predictions(model, test_x)
        with torch.no_grad():
            error = float((model.eval()(test_x) - reference).norm() / reference.norm())
        accuracy, agreement = float((pred == test_y).float().mean()), float((pred == teacher_pred).float().mean())
        wall = "" if seconds is None else f"{seconds:.1f}"
        print(f"| {name} | {accuracy:.2%} | {agreement:.2%} | {error:.4f} | {wall} |")


def time_resnet50(samples: int) -> None:
    """Wall time of a rank-1 separable conversion of ResNet-50 at 224x224, without and with calibration."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    inputs = torch.randn(samples, 3, 224, 224)
    config = ConvertConfig(target="separable", rank=1)
    clock, cpu = time.perf_counter(), time.process_time()
    convert_model(model, inputs[:1], config)
    plain, plain_cpu = time.perf_counter() - clock, time.process_time() - cpu
    clock, cpu = time.perf_counter(), time.process_time()
    result = convert_model(model, inputs[:1], config, calibration=CalibrationConfig(inputs, samples=samples))
    total, total_cpu = time.perf_counter() - clock, time.process_time() - cpu
    calibration = result.report.calibration
    print(f"ResNet-50, {calibration.calibrated} layers calibrated on {samples} inputs 3x224x224 (batch 32):")
    print(f"conversion alone {plain:.1f} s wall, {plain_cpu:.1f} s CPU; with calibration {total:.1f} s wall, ")
    print(f"{total_cpu:.1f} s CPU ({calibration.seconds:.1f} s wall calibrating). On a shared machine the CPU time")
    print("is the figure to read: with one thread it is the wall time on a core of one's own.")


if __name__ == "__main__":
    main()
