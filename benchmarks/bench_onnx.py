"""ONNX Runtime latency of torchvision models before and after `--to separable --rank 1`, side by side.

Prints three sections for BENCHMARKS.md:

1. ResNet-18 on the CPU provider (2 threads), batch 1: measured speedup against the MAC reduction ratio (issue 3's
   target: at least 60% of it), with an independent check (each file timed alone in a fresh process, plain
   session.run) and where the converted model's time goes (ONNX Runtime's per-node profile).
2. The harness's own overhead per timed run, on an identity model (target: under 50 microseconds).
3. A table for several models: MAC ratio, speedup at batch 1 and 8, parity (ONNX Runtime against PyTorch).

    .venv/bin/python benchmarks/bench_onnx.py [--threads 2] [--runs 30] [--models resnet18 resnet50 ...]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import torch
import torchvision

from convert import BenchConfig, ConvertConfig, benchmark_onnx, convert_model, export_onnx
from convert.runtime.bench import _runner, identity_model
from convert.runtime.sessions import open_session
from convert.runtime.timing import latency_stats, time_side_by_side

# name -> (factory, input shape)
MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), (1, 3, 224, 224)),
    "resnet50": (lambda: torchvision.models.resnet50(), (1, 3, 224, 224)),
    "vgg11": (lambda: torchvision.models.vgg11(), (1, 3, 224, 224)),
    "densenet121": (lambda: torchvision.models.densenet121(), (1, 3, 224, 224)),
    "fcn_resnet50": (
        lambda: torchvision.models.segmentation.fcn_resnet50(weights_backbone=None),
        (1, 3, 128, 128),
    ),
    "lraspp_mobilenet_v3_large": (
        lambda: torchvision.models.segmentation.lraspp_mobilenet_v3_large(weights_backbone=None),
        (1, 3, 256, 256),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed runs at batch 1 (batch 8: a third of it)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--alone", nargs="+", help=argparse.SUPPRESS)  # the independent check, in a child process
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    if args.alone:
        print(json.dumps(time_alone(args.alone, args.threads, args.runs)))
        return
    print(
        f"# {platform.processor() or platform.machine()}, {psutil.cpu_count(logical=False)} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}; {args.threads} threads; "
        f"{datetime.date.today()}"
    )
    with tempfile.TemporaryDirectory() as folder:
        headline(Path(folder), args)
        overhead(Path(folder), args.threads)
        table(Path(folder), args)


def convert_and_export(name: str, folder: Path) -> tuple[Path, Path, float, float, float]:
    """(original.onnx, model.onnx, MAC ratio, parity of the original, parity of the converted)."""
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(shape)
    result = convert_model(model, x, ConvertConfig(target="separable", rank=1))
    totals = result.report.totals
    paths = folder / f"{name}-original.onnx", folder / f"{name}-separable.onnx"
    parity = [
        max(p.max_rel for p in export_onnx(m, x, path, strict=False).parity)
        for m, path in ((model, paths[0]), (result.model, paths[1]))
    ]
    return *paths, totals.macs_before / totals.macs_after, *parity


def headline(folder: Path, args: argparse.Namespace) -> None:
    original, converted, ratio, *_ = convert_and_export("resnet18", folder)
    config = BenchConfig(device="cpu", threads=args.threads, batch_sizes=(1,))  # the defaults: 10 warm-up, 100 runs
    result = benchmark_onnx([original, converted], config, names=["original", "converted"])
    speedup = result.speedup[0].speedup
    lat = [m.latency[0] for m in result.models]
    child = subprocess.run(
        [sys.executable, __file__, "--alone", str(original), str(converted), "--threads", str(args.threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    alone = json.loads(child.stdout)
    print("\n## ResNet-18, --to separable --rank 1, CPU provider, batch 1\n")
    print("| measurement | original p50 ms | converted p50 ms | speedup | MAC ratio | speedup / MAC ratio |")
    print("|---|---|---|---|---|---|")
    print(
        f"| side by side (convert's harness, 100 runs, alternating) | {lat[0].p50:.2f} | {lat[1].p50:.2f} "
        f"| {speedup:.2f}x | {ratio:.2f}x | {speedup / ratio:.0%} |"
    )
    alone_speedup = alone["p50"][0] / alone["p50"][1]
    print(
        f"| each file alone, fresh process, session.run ({args.runs * 3} runs) | {alone['p50'][0]:.2f} "
        f"| {alone['p50'][1]:.2f} | {alone_speedup:.2f}x | {ratio:.2f}x | {alone_speedup / ratio:.0%} |"
    )
    met = "met" if speedup >= 0.6 * ratio else "NOT met"
    print(f"\nTarget (speedup >= 60% of the MAC ratio, {0.6 * ratio:.2f}x): {met} ({speedup:.2f}x).")
    print("\nWhere the converted model's time goes (ONNX Runtime profile, CPU provider):\n")
    print("| node kind | share of MACs | share of time | GMAC/s |")
    print("|---|---|---|---|")
    for kind, (mac_share, time_share, rate) in alone["profile"].items():
        print(f"| {kind} | {mac_share:.0%} | {time_share:.0%} | {rate:.0f} |")


def time_alone(paths: list[str], threads: int, runs: int) -> dict:
    """In a fresh process: each model timed alone (its own thread pool, plain session.run), and the converted
    model's per-node profile."""
    p50 = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feeds = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}
        for _ in range(10):
            session.run(None, feeds)
        seconds = []
        for _ in range(runs * 3):
            start = time.perf_counter()
            session.run(None, feeds)
            seconds.append(time.perf_counter() - start)
        p50.append(statistics.median(seconds) * 1000)
    return {"p50": p50, "profile": profile(paths[-1], threads, feeds)}


def profile(path: str, threads: int, feeds: dict) -> dict[str, tuple[float, float, float]]:
    """Per kind of node: (share of MACs, share of time, GMAC/s), from ORT's profile of its optimized graph."""
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = f"{folder}/profile"
        options.optimized_model_filepath = f"{folder}/optimized.onnx"
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for _ in range(20):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
        optimized = onnx.load(f"{folder}/optimized.onnx")
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in optimized.graph.node}
    seconds: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            seconds[kind_of(event["args"]["op_name"], attrs.get(node, {}))] += event["dur"] / 1e6
    macs = conv_macs(path)
    total_time, total_macs = sum(seconds.values()), sum(macs.values())
    return {
        kind: (macs.get(kind, 0) / total_macs, t / total_time, macs.get(kind, 0) * 20 / t / 1e9 if t else 0.0)
        for kind, t in seconds.most_common()
    }


def kind_of(op: str, attrs: dict) -> str:
    if op != "Conv":
        return "other (pool, Gemm, reorder, ...)"
    if attrs.get("group", 1) > 1:
        return "depthwise conv"
    return "pointwise conv (1x1)" if all(k == 1 for k in attrs.get("kernel_shape", [])) else "dense conv (kxk)"


def conv_macs(path: str) -> dict[str, int]:
    """MACs per kind of conv at batch 1, from the ONNX graph (shape inference)."""
    model = onnx.load(path)
    for tensor in list(model.graph.input):
        tensor.type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    shapes |= {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    macs: collections.Counter[str] = collections.Counter()
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = weights[node.input[1]]
        attrs.setdefault("kernel_shape", w[2:])
        out = shapes[node.output[0]]
        macs[kind_of("Conv", attrs)] += int(np.prod(out[2:])) * int(np.prod(w))
    return macs


def overhead(folder: Path, threads: int) -> None:
    """The identity model's timed runs: everything the harness adds to each figure (timer, Python call, ORT's
    run with bound inputs and outputs); and the loop's own cost outside the timed interval."""
    path = identity_model(folder / "identity.onnx")
    runner = _runner(open_session(path, "cpu", threads), 1, path)
    runs = 20000
    start = time.perf_counter()
    (seconds,) = time_side_by_side([runner], warmup=100, runs=runs)
    wall = time.perf_counter() - start
    lat = latency_stats(1, seconds)
    outside = (wall - sum(seconds)) / runs * 1e6
    print("\n## Harness overhead per timed run (identity model, CPU provider)\n")
    print("| timed interval p50 | p99 | mean | loop cost outside the interval, per run |")
    print("|---|---|---|---|")
    print(f"| {lat.p50 * 1000:.1f} us | {lat.p99 * 1000:.1f} us | {lat.mean * 1000:.1f} us | {outside:.1f} us |")
    met = "met" if lat.p50 * 1000 < 50 else "NOT met"
    print(f"\nTarget (under 50 us per timed run): {met}.")


def table(folder: Path, args: argparse.Namespace) -> None:
    print(f"\n## Models, --to separable --rank 1, CPU provider, {args.threads} threads\n")
    print("| model | input | MAC ratio | speedup b1 | speedup b8 | b1 p50 ms (orig -> conv) | parity (max rel. diff) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        original, converted, ratio, parity_original, parity_converted = convert_and_export(name, folder)
        figures = []
        for batch, runs, warmup in ((1, args.runs, 5), (8, max(3, args.runs // 3), 2)):
            config = BenchConfig(device="cpu", threads=args.threads, warmup=warmup, runs=runs, batch_sizes=(batch,))
            figures.append(benchmark_onnx([original, converted], config, names=["original", "converted"]))
        b1, b8 = (f.speedup[0].speedup for f in figures)
        lat = [m.latency[0].p50 for m in figures[0].models]
        shape = "x".join(map(str, MODELS[name][1][1:]))
        print(
            f"| {name} | {shape} | {ratio:.2f}x | {b1:.2f}x | {b8:.2f}x | {lat[0]:.1f} -> {lat[1]:.1f} "
            f"| {parity_original:.1g} / {parity_converted:.1g} |",
            flush=True,
        )
        for path in (original, converted):
            path.unlink()


if __name__ == "__main__":
    main()
