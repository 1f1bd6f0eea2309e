"""The GPU check (issue 16): the CUDA paths of the project, run on a real GPU, as one table (also written as JSON).

    PYTHONPATH=. python3 benchmarks/gpu_check.py --json gpu_check.json          # a GPU machine: under 6 minutes
    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu --models tiny     # its CPU form (CI: test_gpu_check)

It runs from the source tree on whatever torch (2.11+) the machine has, without the project's venv: it imports
torch, torchvision, onnx, numpy and the project only. What it checks, in this order (each step starts only while
`--time-limit` leaves room for it, else its row says it was skipped; the JSON is rewritten after every row, so a
run cut short keeps what it measured):

1. exactness: a ResNet-18 converted at full rank on the GPU matches the original in float32 (TF32 off), and the
   converted model in bfloat16 is as close to the float32 original as the original is in bfloat16;
2. the PyTorch runtime, eager: original vs rank-1 separable vs `--to auto --runtime torch --target-speedup 1.5`
   (planned eager, channels-last, at `--plan-batch`, per dtype), in float32 and bfloat16, channels-last, at batch
   1 and 32; a model slower than the original says so (SLOWER), and every layer where each factorized form was
   measured slower must be kept by the plan;
3. distillation: 100 steps with bf16 autocast (steps/s, the loss falls);
4. the CUDA-only tests of the suite (`pytest -m cuda` on the files that have them);
5. the same latency table compiled (`torch.compile`, default mode; bfloat16 first);
6. ONNX Runtime's CUDA provider, where it is importable (onnxruntime-gpu): the same table with `--to auto
   --runtime ort`, and where the nodes ran (nothing silently on the CPU provider).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from gpu_report import Check
from torch import nn

from convert import (
    AutoConfig,
    BenchConfig,
    ConvertConfig,
    DistillConfig,
    LatencyPlanner,
    benchmark_onnx,
    benchmark_torch,
    convert_model,
    distill_result,
    export_onnx,
    load_data,
)
from convert.report.schema import AutoReport, Benchmark
from convert.runtime.devices import resolve_device

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("exactness", "eager", "distill", "pytest", "compiled", "ort")
SETTINGS = {  # name -> (compile, dtype); every setting runs channels-last
    "eager-float32": (False, "float32"),
    "eager-bfloat16": (False, "bfloat16"),
    "compiled-bfloat16": (True, "bfloat16"),
    "compiled-float32": (True, "float32"),
}
# Seconds a step of ResNet-50 is given before it starts (a guess for an H100/H200-class GPU), and the share of it
# the other models take: a step that would not fit into what is left of --time-limit is skipped, and its row
# says so.
COST = {"exactness": 20, "build": 60, "eager": 20, "distill": 30, "pytest": 120, "compiled": 120, "ort": 150}
SCALE = {"resnet50": 1.0, "resnet18": 0.5, "tiny": 0.1}


def tiny() -> nn.Module:
    """The CPU form's model: three conv-BN-ReLU blocks, pooled into 10 classes (checks the logic in seconds)."""

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    layers = [*block(3, 16, 2), *block(16, 32, 1), *block(32, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers, nn.Linear(32, 10))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "tiny": tiny,
}


@dataclasses.dataclass
class Variants:
    """One model on the device: the original, its rank-1 separable conversion, and `--to auto` plans per dtype."""

    original: nn.Module
    separable: object  # the Conversion (distillation starts from it)
    auto: dict[str, nn.Module]  # dtype -> the model planned on the torch runtime in that dtype


def inputs(args: argparse.Namespace, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, args.size, args.size, device=args.device)


def exactness(check: Check, name: str) -> None:
    """Full rank on the device: the converted model computes the original in float32; in bfloat16 it is as close to
    the float32 original as the original itself in bfloat16."""
    args = check.args
    original, x = MODELS[name]().eval().to(args.device), inputs(args, 2)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # true float32 convs: TF32's error is not the surgery's
    try:
        converted = convert_model(original, x, ConvertConfig(target="separable", rank="full")).model
        with torch.no_grad():
            reference = original(x)
            error = _rel(converted(x), reference)
            converted_bf16 = _rel(converted.to(torch.bfloat16)(x.bfloat16()).float(), reference)
            original_bf16 = _rel(original.to(torch.bfloat16)(x.bfloat16()).float(), reference)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    check.add(
        "exactness",
        f"{name} full rank, float32 on {args.device}",
        f"output rel. error {error:.2g}",
        "ok" if error < 1e-4 else "FAIL",
    )
    close = converted_bf16 <= 2 * original_bf16 + 1e-3
    check.add(
        "exactness",
        f"{name} full rank in bfloat16 vs the float32 original",
        f"rel. error {converted_bf16:.2g} (the original in bfloat16: {original_bf16:.2g})",
        "ok" if close else "FAIL",
    )


def _rel(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((candidate.double() - reference.double()).norm() / reference.double().norm())


def build(check: Check, name: str, dtypes: list[str], store: dict[str, Variants]) -> None:
    """The rank-1 separable conversion and a torch-runtime `--to auto` plan per dtype (eager, channels-last)."""
    args = check.args
    original, x = MODELS[name]().eval().to(args.device), inputs(args, args.plan_batch)
    separable = convert_model(original, x, ConvertConfig(target="separable", rank=1))
    auto = {}
    for dtype in dtypes:
        auto[dtype], report = _auto(original, x, _auto_config(args, runtime="torch", dtype=dtype, channels_last=True))
        check.details["auto"][f"{name} torch {dtype}"] = dataclasses.asdict(report)
        check.add("eager", f"{name} --to auto --runtime torch, {dtype}, batch {args.plan_batch}", *_kept(report))
    store[name] = Variants(original, separable, auto)


def _auto(model: nn.Module, x: torch.Tensor, config: AutoConfig) -> tuple[nn.Module, AutoReport]:
    conversion = convert_model(model, x, ConvertConfig(target="auto"), planner=LatencyPlanner(config))
    return conversion.model, conversion.report.auto


def _auto_config(args: argparse.Namespace, **runtime: object) -> AutoConfig:
    """The `--to auto` settings of the check's arguments, on `runtime` ("torch" with its dtype, or "ort")."""
    return AutoConfig(
        target_speedup=args.target_speedup,
        device=args.device,
        threads=args.threads,
        runs=args.plan_runs,
        warmup=args.warmup,
        max_candidates=args.max_candidates,
        **runtime,
    )


def _kept(report: AutoReport) -> tuple[str, str]:
    """The plan in one line, and whether every layer that factorizing made slower was kept."""
    slower = [r for r in report.layers if all(c.latency_ms > r.candidates[0].latency_ms for c in r.candidates[1:])]
    wrongly = [r.name for r in slower if r.chosen != 0]
    kept = sum(r.chosen == 0 for r in report.layers)
    result = (
        f"predicted {report.predicted_speedup:.2f}x; kept {kept}/{len(report.layers)} layers, "
        f"{len(slower)} where every factorized form is slower"
        + (f"; NOT kept: {', '.join(wrongly)}" if wrongly else ", all kept")
    )
    return result, "FAIL" if wrongly else "ok"


def latency(check: Check, name: str, variants: Variants, section: str, setting: str) -> None:
    """Original vs separable vs auto on the PyTorch runtime in `setting`, channels-last."""
    args = check.args
    compiled, dtype = SETTINGS[setting]
    config = BenchConfig(
        runtime="torch",
        device=args.device,
        threads=args.threads,
        compile=compiled,
        dtype=dtype,
        channels_last=True,
        warmup=args.warmup,
        runs=args.runs,
        batch_sizes=args.batch_sizes,
    )
    models = [variants.original, variants.separable.model, variants.auto[dtype]]
    bench = benchmark_torch(models, inputs(args, 1), config, names=["original", "separable r1", "auto"])
    check.details["benchmarks"][f"{name} torch {setting}"] = dataclasses.asdict(bench)
    _latency_rows(check, section, f"{name} {setting}, channels-last", bench)


def _latency_rows(check: Check, section: str, label: str, bench: Benchmark) -> None:
    """One row per batch size: each model's median, its speedup over the original, SLOWER where it is slower."""
    for index, batch in enumerate(bench.batch_sizes):
        base = bench.models[0].latency[index].p50
        cells, slower = [f"original {base:.3g} ms"], []
        for model in bench.models[1:]:
            ms = model.latency[index].p50
            cells.append(f"{model.name} {ms:.3g} ms ({base / ms:.2f}x)")
            if ms > base:
                slower.append(f"{model.name} is {ms / base:.2f}x SLOWER than the original")
        check.add(section, f"{label}, batch {batch}", " | ".join(cells + slower), "SLOWER" if slower else "ok")


def distill(check: Check, variants: Variants) -> None:
    args = check.args
    cuda = args.device == "cuda"
    config = DistillConfig(
        steps=args.distill_steps,
        batch_size=32 if cuda else 8,
        device=args.device,
        amp="bf16" if cuda else "off",
        eval_every=args.distill_steps,  # validations before and after only: the check is the training steps
    )
    data = load_data("synthetic", inputs(args, 1))
    report = distill_result(variants.separable, variants.original, data, config).report.distill
    falls = report.loss_end < report.loss_start
    check.add(
        "distill",
        f"{report.steps} steps, batch {report.batch_size}, autocast {report.amp or 'off'} on {report.device}",
        f"{report.steps_per_second:.3g} steps/s; loss {report.loss_start:.4g} -> {report.loss_end:.4g}",
        "ok" if falls else "FAIL",
    )


def cuda_tests(check: Check) -> None:
    """`pytest -m cuda` on the test files that have CUDA-only tests (the others need packages a bare GPU machine
    may lack, e.g. grpc's health service)."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    left = check.args.time_limit - (time.monotonic() - check.start)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=max(30, left - 10))
    output = done.stdout + done.stderr
    check.details["pytest"] = {"command": command, "returncode": done.returncode, "output": output[-6000:]}
    summary = next(
        (
            line.strip("= ")
            for line in reversed(output.splitlines())
            if re.search(r"\d+ (passed|failed|skipped|error)", line)
        ),
        "no summary",
    )
    failed = [line.split()[1] for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
    check.add(
        "pytest",
        f"pytest -m cuda ({len(files)} files)",
        summary + (f"; failed: {', '.join(failed)}" if failed else ""),
        "ok" if done.returncode == 0 else "FAIL",
    )


def onnx_runtime(check: Check, name: str, variants: Variants) -> None:
    """The same table on ONNX Runtime (`--runtime ort`): original, separable and an ORT-planned `--to auto`, exported
    with a dynamic batch, on the CUDA provider (the CPU provider in the CPU form); where every node ran."""
    args = check.args
    device = resolve_device(args.device)
    if device.provider != ("cuda" if args.device == "cuda" else "cpu"):
        check.add(
            "ort", f"{name} on ONNX Runtime", f"skipped: {device.reason} (see benchmarks/gpu_wheels.sh)", "skipped"
        )
        return
    x = inputs(args, args.plan_batch)
    auto, report = _auto(variants.original, x, _auto_config(args, runtime="ort"))
    check.details["auto"][f"{name} ort"] = dataclasses.asdict(report)
    check.add("ort", f"{name} --to auto --runtime ort, batch {args.plan_batch}", *_kept(report))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        paths = []
        for label, model in (("original", variants.original), ("separable", variants.separable.model), ("auto", auto)):
            paths.append(Path(folder) / f"{label}.onnx")
            export_onnx(model, x, paths[-1])  # checks ONNX Runtime (CPU) against PyTorch: ParityError if not close
        bench = benchmark_onnx(
            paths,
            BenchConfig(
                device=args.device,
                threads=args.threads,
                warmup=args.warmup,
                runs=args.runs,
                batch_sizes=args.batch_sizes,
            ),
            names=["original", "separable r1", "auto"],
        )
    check.details["benchmarks"][f"{name} ort"] = dataclasses.asdict(bench)
    on_cpu = [note for note in bench.notes if "ran on the CPU provider" in note]
    compute = [note for note in on_cpu if re.search(r"\b(Conv|Gemm|MatMul)\b", note)]
    check.add(
        "ort",
        f"{name} placement on {bench.providers[0]}",
        "; ".join(on_cpu) or "every node on the first provider",
        "FAIL" if compute or bench.device != device.provider else "ok",
    )
    _latency_rows(check, "ort", f"{name} ONNX Runtime {bench.ort_version} {bench.device}", bench)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--models", help="comma-separated, of " + ", ".join(MODELS) + " (default: resnet18,resnet50; cpu: tiny)"
    )
    parser.add_argument("--size", type=int, help="input height and width (default: 224; cpu: 32)")
    parser.add_argument("--batch-sizes", help="timed batch sizes (default: 1,32; cpu: 1,2)")
    parser.add_argument("--plan-batch", type=int, help="the batch --to auto plans at (default: 32; cpu: 2)")
    parser.add_argument("--runs", type=int, help="timed runs per model and batch size (default: 50; cpu: 5)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default: 10; cpu: 1)")
    parser.add_argument("--plan-runs", type=int, help="timed runs per --to auto candidate (default: 30; cpu: 3)")
    parser.add_argument("--max-candidates", type=int, help="per layer, for --to auto (default: 10; cpu: 3)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the physical cores)")
    parser.add_argument("--distill-steps", type=int, help="(default: 100; cpu: 20)")
    parser.add_argument("--settings", help="of " + ", ".join(SETTINGS) + " (default: all; cpu: eager-float32)")
    parser.add_argument(
        "--sections", help="of " + ", ".join(SECTIONS) + " (default: all; cpu: all but pytest, compiled)"
    )
    parser.add_argument("--target-speedup", type=float, default=1.5)
    parser.add_argument(
        "--time-limit", type=float, default=330.0, help="seconds; later steps are skipped (default: 330)"
    )
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="default: gpu_check.json")
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = {
        "models": "tiny" if cpu else "resnet18,resnet50",
        "size": 32 if cpu else 224,
        "batch_sizes": "1,2" if cpu else "1,32",
        "plan_batch": 2 if cpu else 32,
        "runs": 5 if cpu else 50,
        "warmup": 1 if cpu else 10,
        "plan_runs": 3 if cpu else 30,
        "max_candidates": 3 if cpu else 10,
        "distill_steps": 20 if cpu else 100,  # twice the steps that loss_start and loss_end each average
        "settings": "eager-float32" if cpu else ",".join(SETTINGS),
        "sections": "exactness,eager,distill,ort" if cpu else ",".join(SECTIONS),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models, args.settings, args.sections = (v.split(",") for v in (args.models, args.settings, args.sections))
    args.batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    unknown = [m for m in args.models if m not in MODELS] + [s for s in args.settings if s not in SETTINGS]
    unknown += [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown {', '.join(unknown)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("torch sees no CUDA GPU: run with --device cpu for the CPU form")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    check = Check(args)
    print(json.dumps(check.environment), flush=True)
    store: dict[str, Variants] = {}
    dtypes = sorted({SETTINGS[s][1] for s in args.settings})

    def each(section: str, label: str, run: Callable[..., None], *extra: object) -> None:
        """`run(check, name, variants, *extra)` for every model built, as steps of `section`."""
        for name in store:
            cost = COST[section] * SCALE[name]
            check.step(section, f"{name} {label}", cost, functools.partial(run, check, name, store[name], *extra))

    for name in args.models:
        check.step("exactness", name, COST["exactness"] * SCALE[name], functools.partial(exactness, check, name))
    for name in args.models:  # every later step needs them
        run = functools.partial(build, check, name, dtypes, store)
        if not check.step("eager", f"{name} separable r1 and --to auto", COST["build"] * SCALE[name], run):
            check.add("eager", name, "not built: the later steps leave it out", "skipped")
    for setting in (s for s in args.settings if not SETTINGS[s][0]):
        each("eager", setting, latency, "eager", setting)
    if store:
        first = next(iter(store))
        check.step("distill", first, COST["distill"] * SCALE[first], functools.partial(distill, check, store[first]))
    check.step("pytest", "pytest -m cuda", COST["pytest"], functools.partial(cuda_tests, check))
    for setting in (s for s in args.settings if SETTINGS[s][0]):
        each("compiled", setting, latency, "compiled", setting)
    each("ort", "on ONNX Runtime", onnx_runtime)
    print()
    print(check.table())
    counts = {status: sum(row.status == status for row in check.rows) for status in ("FAIL", "SLOWER", "skipped")}
    print(
        f"\n{len(check.rows)} rows, {counts['FAIL']} FAIL, {counts['SLOWER']} SLOWER, {counts['skipped']} skipped, "
        f"in {time.monotonic() - check.start:.0f} s" + (f"; written to {args.json}" if args.json else "")
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
