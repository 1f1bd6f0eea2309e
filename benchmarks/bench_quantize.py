"""INT8 quantization stacked on the conversion (issue 18): the practitioner's table on a trained ResNet-18, and the
time to quantize ResNet-50.

1. A torchvision ResNet-18 trained here on bench_distill's generated 10-class task at 64x64. Every model below is an
   ONNX file, timed side by side on ONNX Runtime's CPU provider (2 threads, batch 1, alternating run by run), its
   test accuracy measured on ONNX Runtime on held-out images:
   - the original, float;
   - ONNX Runtime static INT8 of the original, QDQ per-channel, U8S8 and S8S8 (ORT's default), as a practitioner
     writes them (`quantize_static` after `quant_pre_process`), and the tool's pick (`--quantize int8`:
     original.int8.onnx);
   - `--to auto --target-speedup T` for each T of --float-targets (default 2 and 3), each with the same
     distillation (model.onnx);
   - `--to auto --target-speedup T --quantize int8` with the same distillation (model.onnx and model.int8.onnx), for
     each T of --int8-targets (default 4 and 4.5: the planner's prediction has overshot the measured speedup by
     10-15% on a shared CPU). Target: at least 4x over the float original, within 1.5 points of its accuracy.
2. ResNet-50 (random weights, 1x3x224x224): each step of the quantization stage timed on its own (prepare,
   calibrate on 128 inputs, write each of the four default formats and run it on 128 held-out inputs, time them).
   Target: < 60 s for a quantization (prepare, calibrate, write one format); the stage's other steps are its search.

    .venv/bin/python benchmarks/bench_quantize.py [--teacher-steps 400] [--distill-steps 600] [--runs 100]
        [--float-targets 2 3] [--int8-targets 4 4.5]

The teacher is cached in --work (default /tmp/bench-quantize, outside the repository): a second run reuses it and
the jobs' latency cache, and replaces the jobs' folders (with --reuse it keeps those that hold a report.json, so
that runs side by side, or after an interruption, share the jobs done).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnxruntime as ort
import torch
import torchvision
from bench_distill import make_images
from common import train_classifier
from torch import nn

from convert.auto import AutoConfig
from convert.distill.config import DistillConfig
from convert.job import DistillJob, JobOptions, run_job
from convert.report.schema import Report
from convert.runtime.bench import BenchConfig, benchmark_onnx
from convert.runtime.export import export_onnx
from convert.runtime.int8 import CANDIDATE_RUNS, CHECK_INPUTS
from convert.runtime.quantize import (
    CALIBRATION_BATCH,
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_FORMATS,
    FORMATS,
    QuantizeConfig,
    SampleReader,
    calibrate,
    prepare,
    quantize_file,
)
from convert.runtime.sessions import open_session
from convert.surgery.config import ConvertConfig

SIZE = 64  # the task: 64x64 images
T = TypeVar("T")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-quantize"), help="teacher, data, outputs")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (timing)")
    parser.add_argument("--train-threads", type=int, default=1, help="torch threads (1: no spinning on a shared CPU)")
    parser.add_argument("--teacher-steps", type=int, default=400)
    parser.add_argument("--distill-steps", type=int, default=600)
    parser.add_argument("--distill-batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model, alternating")
    parser.add_argument("--reuse", action="store_true", help="keep the jobs whose folders hold a report.json")
    parser.add_argument("--float-targets", type=float, nargs="*", default=[2.0, 3.0], help="--target-speedup, float")
    parser.add_argument("--int8-targets", type=float, nargs="+", default=[4.0, 4.5], help="--target-speedup with INT8")
    parser.add_argument("--skip-resnet18", action="store_true")
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.train_threads)
    args.work.mkdir(parents=True, exist_ok=True)
    print(
        f"# bench_quantize, {datetime.date.today()}: {_cpu()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, onnxruntime {ort.__version__}, Python {sys.version.split()[0]}",
        flush=True,
    )
    if not args.skip_resnet18:
        resnet18(args)
    if not args.skip_resnet50:
        resnet50(args)


# --- 1. a trained ResNet-18 --------------------------------------------------------------------------------------


def train_teacher(steps: int, seed: int = 0) -> nn.Module:
    """ResNet-18 (10 classes) trained on 10000 labeled 64x64 images: AdamW, one-cycle schedule, batch 64."""
    images, labels = make_images(10000, seed=1, size=SIZE)
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    return train_classifier(model, images, labels, steps, lr=2e-3, weight_decay=1e-4, seed=seed)


def resnet18(args: argparse.Namespace) -> None:
    work = args.work
    teacher_path = work / f"teacher-{args.teacher_steps}.pt"
    if teacher_path.exists():
        print(f"\nteacher: {teacher_path} (cached)", flush=True)
    else:
        start = time.perf_counter()
        torch.save(train_teacher(args.teacher_steps), teacher_path)
        print(f"\nteacher: {args.teacher_steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    unlabeled, _ = make_images(5000, seed=2, size=SIZE)  # distillation and calibration inputs, labels dropped
    if not (work / "unlabeled.pt").exists():  # the same tensors each time, and another run may be reading them
        torch.save(unlabeled, work / "unlabeled.pt")
    test, test_labels = make_images(1000, seed=3, size=SIZE)

    def job(name: str, target: float, quantize: bool) -> Path:
        outdir = work / name
        options = JobOptions(
            model=str(teacher_path),
            input_shapes=((1, 3, SIZE, SIZE),),
            config=ConvertConfig(target="auto"),
            auto=AutoConfig(
                target_speedup=target, device="cpu", threads=args.threads, cache_dir=str(work / "latency-cache")
            ),
            bench=BenchConfig(device="cpu", threads=args.threads, runs=args.runs),
            distill=DistillJob(
                data=(str(work / "unlabeled.pt"),),
                config=DistillConfig(steps=args.distill_steps, batch_size=args.distill_batch, device="cpu"),
            ),
            quantize=QuantizeConfig() if quantize else None,
        )
        start = time.perf_counter()
        if args.reuse and (outdir / "report.json").exists():
            report = Report.from_dict(json.loads((outdir / "report.json").read_text()))
            name = f"{name} (reused)"
        else:
            report = run_job(options, outdir, overwrite=True)  # a second run replaces the first
        distill = report.distill
        print(
            f"{name}: {time.perf_counter() - start:.0f} s (distillation {distill.seconds:.0f} s); predicted "
            f"{report.auto.predicted_speedup:.2f}x; {distill.message}",
            flush=True,
        )
        return outdir

    quantized = {target: job(f"auto{target:g}-int8", target, True) for target in args.int8_targets}
    floats = {target: job(f"auto{target:g}", target, False) for target in args.float_targets}
    auto4 = quantized[args.int8_targets[0]]
    practitioner = _practitioner_int8(auto4 / "original.onnx", unlabeled[:128], work)
    files = {
        "original, float": auto4 / "original.onnx",
        "ORT static INT8, QDQ per-channel, U8S8": practitioner["qdq-u8s8"],
        "ORT static INT8, QDQ per-channel, S8S8 (ORT's default)": practitioner["qdq-s8s8"],
        "`--quantize int8` alone (original.int8.onnx)": auto4 / "original.int8.onnx",
    } | {
        f"`--to auto --target-speedup {target:g}` + distill": folder / "model.onnx" for target, folder in floats.items()
    }
    for target, folder in quantized.items():
        files[f"`--to auto --target-speedup {target:g}` + distill, float (model.onnx)"] = folder / "model.onnx"
        files[f"`--to auto --target-speedup {target:g} --quantize int8` + distill (model.int8.onnx)"] = (
            folder / "model.int8.onnx"
        )
    timing = benchmark_onnx(
        list(files.values()), BenchConfig(device="cpu", threads=args.threads, runs=args.runs), names=list(files)
    )
    base = timing.models[0].latency[0].p50
    teacher_pred = _predictions(files["original, float"], test)
    teacher_accuracy = float((teacher_pred == test_labels.numpy()).mean())
    report = json.loads((auto4 / "report.json").read_text())
    quantize = report["quantize"]
    print(
        f"\n## ResNet-18 (torchvision, 10 classes) trained on the generated 64x64 task: test accuracy "
        f"{teacher_accuracy:.2%} on {len(test)} held-out images\n"
    )
    print(
        f"ONNX Runtime {ort.__version__} CPU provider, {args.threads} threads, batch 1, {args.runs} runs per model, "
        f"all {len(files)} models alternating run by run; distillation: {args.distill_steps} steps, batch "
        f"{args.distill_batch}, on 5000 unlabeled inputs; calibration: {quantize['calibration_samples']} of them "
        f"({quantize['calibration_method']})\n"
    )
    print("| model | p50 ms | speedup | test accuracy | vs teacher, points | top-1 agreement |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = {}
    for (name, path), model in zip(files.items(), timing.models, strict=True):
        pred = _predictions(path, test)
        accuracy = float((pred == test_labels.numpy()).mean())
        p50 = model.latency[0].p50
        rows[name] = (base / p50, accuracy)
        print(
            f"| {name} | {p50:.3f} | {base / p50:.2f}x | {accuracy:.2%} | {100 * (accuracy - teacher_accuracy):+.2f} | "
            f"{float((pred == teacher_pred).mean()):.2%} |"
        )
    print()
    for target in quantized:
        speedup, accuracy = rows[f"`--to auto --target-speedup {target:g} --quantize int8` + distill (model.int8.onnx)"]
        met = speedup >= 4.0 and teacher_accuracy - accuracy <= 0.015
        print(
            f"target (>= 4x over the float original within 1.5 points of its accuracy), --target-speedup {target:g} "
            f"--quantize int8: {'met' if met else 'NOT met'} ({speedup:.2f}x, "
            f"{100 * (accuracy - teacher_accuracy):+.2f} points)"
        )
    for model in ("original", "converted"):
        record = quantize[model]
        print(f"\n{record['source']}: the tool's formats (kept: {record['format']}), timed at batch 1, 30 runs")
        print("\n| format | ms | speedup over float | rel. error vs float | top-1 agreement | passed |")
        print("|---|---:|---:|---:|---:|---|")
        for c in record["candidates"]:
            agreement = "" if c["top1_agreement"] is None else f"{c['top1_agreement']:.2%}"
            print(
                f"| {c['label']} | {c['latency_ms']:.3f} | {c['speedup']:.2f}x | {c['rel_error']:.3g} | {agreement} | "
                f"{'yes' if c['passed'] else 'no'} |"
            )
    print("\nauto plans (chosen forms):")
    for folder in (*floats.values(), *quantized.values()):
        auto = json.loads((folder / "report.json").read_text())["auto"]
        chosen = [layer["candidates"][layer["chosen"]]["label"] for layer in auto["layers"]]
        kept = sum(label == "keep" for label in chosen)
        print(f"- {folder.name}: {kept} of {len(chosen)} convs kept; {', '.join(chosen)}")


def _practitioner_int8(original: Path, calibration: torch.Tensor, work: Path) -> dict[str, Path]:
    """The original quantized as a practitioner would: pre-processed, min-max ranges on `calibration`, QDQ
    per-channel, U8S8 and S8S8 (no 7-bit weights)."""
    folder = work / "practitioner"
    folder.mkdir(exist_ok=True)
    prepared = prepare(original, folder / "prepared.onnx")
    name = open_session(prepared, "cpu").session.get_inputs()[0].name
    samples = torch.utils.data.TensorDataset(calibration)
    ranges = calibrate(prepared, SampleReader([name], samples, range(len(calibration)), 16), "minmax", folder / "r")
    return {f: quantize_file(prepared, folder / f"{f}.onnx", FORMATS[f], ranges) for f in ("qdq-u8s8", "qdq-s8s8")}


def _predictions(path: Path, images: torch.Tensor) -> np.ndarray:
    session = open_session(path, "cpu").session
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 100].numpy()})[0].argmax(1) for i in range(0, len(images), 100)]
    )


# --- 2. ResNet-50: how long quantizing takes --------------------------------------------------------------------


def resnet50(args: argparse.Namespace) -> None:
    """Each step of the quantization stage on ResNet-50's ONNX file, timed on its own: a practitioner's quantization
    (prepare, calibrate, write one format) is the target; the stage adds the other formats, the check and the timing.
    """
    folder = args.work / "resnet50"
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    original = folder / "original.onnx"
    export_onnx(torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224), original)
    name = open_session(original, "cpu").session.get_inputs()[0].name
    data = torch.utils.data.TensorDataset(torch.randn(2 * CHECK_INPUTS, 3, 224, 224))  # random: only times count
    calibration = SampleReader([name], data, range(DEFAULT_CALIBRATION_SAMPLES), CALIBRATION_BATCH)
    check = SampleReader([name], data, range(DEFAULT_CALIBRATION_SAMPLES, len(data)), CALIBRATION_BATCH)
    session = open_session(original, "cpu", threads=args.threads).session
    steps: dict[str, float] = {}

    def timed(step: str, work: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = work()
        steps[step] = time.perf_counter() - start
        return result

    timed(
        f"float model on the {CHECK_INPUTS} held-out inputs (the check's reference)",
        lambda: list(outputs(session, check)),
    )
    prepare_step, calibrate_step = (
        "prepare (BatchNorm folded, shape inference)",
        f"calibrate (min-max, {DEFAULT_CALIBRATION_SAMPLES} inputs)",
    )
    prepared = timed(prepare_step, lambda: prepare(original, folder / "prepared.onnx"))
    ranges = timed(calibrate_step, lambda: calibrate(prepared, calibration, "minmax", folder / "ranges.json"))
    paths = []
    for fmt in DEFAULT_FORMATS:
        path = timed(
            f"write {fmt}", lambda fmt=fmt: quantize_file(prepared, folder / f"{fmt}.onnx", FORMATS[fmt], ranges)
        )
        quantized = open_session(path, "cpu", threads=args.threads).session
        timed(f"check {fmt} on the {CHECK_INPUTS} held-out inputs", lambda q=quantized: list(outputs(q, check)))
        paths.append(path)
    timing = BenchConfig(device="cpu", threads=args.threads, runs=CANDIDATE_RUNS)
    timed(
        f"time float and the {len(paths)} formats ({CANDIDATE_RUNS} runs each, alternating)",
        lambda: benchmark_onnx([original, *paths], timing, names=["float", *DEFAULT_FORMATS]),
    )
    practitioner = steps[prepare_step] + steps[calibrate_step] + steps[f"write {DEFAULT_FORMATS[0]}"]
    print(
        f"\n## ResNet-50 (random weights), 1x3x224x224: the quantization stage step by step, {args.threads} threads\n"
    )
    print("| step | wall s |")
    print("|---|---:|")
    for step, seconds in steps.items():
        print(f"| {step} | {seconds:.1f} |")
    print(f"| **the stage, all steps** | **{sum(steps.values()):.1f}** |")
    print(
        f"\ntarget (quantizing ResNet-50 under 60 s: prepare, calibrate, write {DEFAULT_FORMATS[0]}): "
        f"{'met' if practitioner < 60 else 'NOT met'} ({practitioner:.1f} s)"
    )


def outputs(session: ort.InferenceSession, reader: SampleReader) -> Iterator[list[np.ndarray]]:
    """The outputs of `session` on every batch of `reader`."""
    for feeds in reader:
        yield session.run(None, feeds)


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return f"{line.partition(':')[2].strip()}, {os.cpu_count()} CPUs"
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
