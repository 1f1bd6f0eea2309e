"""`convert MODEL ...`'s parser: a job's options, the groups of each feature from the module of its own."""

from __future__ import annotations

import argparse
from pathlib import Path

from convert.auto import AutoConfig
from convert.cli.args.base import Parser, examples, switch
from convert.cli.args.bench import benchmark_arguments
from convert.cli.args.distill import calibration_arguments, distill_arguments
from convert.cli.args.model import model_arguments
from convert.cli.args.quantize import quantize_arguments
from convert.cli.args.service import service_arguments
from convert.runtime.parity import DEFAULT_ATOL

__all__ = ["SUBCOMMANDS", "USAGE", "convert_parser"]

# `convert`'s subcommands, each with its usage and what it does: the usage line of `convert --help` lists them all.
SUBCOMMANDS = {
    "inspect": ("MODEL [options]", "what each target would save, per conv; writes nothing"),
    "bench": ("FILE [FILE ...] [options]", "time ONNX files, or PyTorch models, side by side"),
    "serve": ("[--port 50051] [--data-dir DIR] [options]", "run the gRPC conversion service"),
    "jobs": ("{list,delete} --server HOST:PORT [options]", "list or delete a server's jobs"),
}
USAGE = "\n".join(
    [
        "convert MODEL [options]  (a conversion job: the options below)",
        *(f"       convert {name} {usage}  ({what})" for name, (usage, what) in SUBCOMMANDS.items()),
        "       convert SUBCOMMAND --help  (its options)",
    ]
)


def convert_parser() -> argparse.ArgumentParser:
    """`convert MODEL ...`: the options of a job (conversion, ONNX, benchmark, --to auto, service, distillation)."""
    parser = Parser(
        prog="convert",
        usage=USAGE,
        description="Rewrite standard convolutions into depthwise-separable or grouped ones (truncated SVD).",
        epilog=examples(
            "convert torchvision:resnet18 --input-shape 1,3,224,224  # writes torchvision.resnet18-separable/",
            "convert timm:resnet50 --model-arg num_classes=10 --input-shape 1,3,224,224 --to grouped --groups 4 -o out",
            "convert mynet:build --weights best.safetensors --input-shape 1,3,32,32 --rank full --onnx -o out",
            "convert model.pt2 --to auto --target-speedup 2 --device cpu -o out --overwrite",
            "convert model.pt --input-shape 1,3,32,32 --distill images/ --steps 600 -o out",
        ),
    )
    model_arguments(parser)
    parser.add_argument(
        "--plan",
        metavar="PLAN.json",
        help="apply the plan.json of an earlier conversion (each layer's form and rank) to this model's weights, "
        "instead of planning from --to/--rank",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUTDIR",
        help="folder for model.pt, report.json, report.md (default: next to a model file, named after it and the "
        "target; here for a factory, named after its module and callable: torchvision.models.resnet18-separable)",
    )
    switch(
        output,
        "--overwrite",
        help="replace the results of an earlier run in OUTDIR (refused without it; --resume continues them)",
    )
    switch(output, "--json", help="print report.json on stdout, and nothing else")
    switch(
        output,
        "--strict",
        help="a warning stops the run (exit status 1, nothing written): e.g. a model with no conv to convert",
    )
    onnx = parser.add_argument_group("ONNX export (writes OUTDIR/original.onnx and OUTDIR/model.onnx)")
    switch(
        onnx,
        "--onnx",
        help="export both models and check ONNX Runtime against PyTorch on the example input and another batch size",
    )
    onnx.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    switch(
        onnx,
        "--static-shapes",
        help="fix every dim to the example input's (default: dynamic batch dimension)",
    )
    onnx.add_argument(
        "--atol",
        type=float,
        default=DEFAULT_ATOL,
        help="parity tolerance: max |ORT - PyTorch| relative to max |PyTorch| per output "
        f"(default: {DEFAULT_ATOL:g}); above it the files go to OUTDIR.failed-parity/ and the exit status is 3",
    )
    bench = parser.add_argument_group("benchmark (implies --onnx, unless --runtime torch)")
    switch(
        bench,
        "--benchmark",
        help="time the original and the converted model side by side: original.onnx and model.onnx on ONNX Runtime, "
        "or (--runtime torch) the PyTorch models themselves; adds a table and benchmark.png",
    )
    benchmark_arguments(
        bench,
        device_help="where the job computes: --distill trains there and --benchmark (and --to auto) times there. "
        "cpu; cuda (PyTorch's GPU; ONNX Runtime's CUDA provider); tensorrt (ONNX Runtime's TensorRT provider for "
        "timing, CUDA for training); auto (default): cuda when PyTorch sees a GPU for training, and when an ONNX "
        "Runtime session really runs on CUDA for timing, else cpu. The conversion itself runs on CPU",
    )
    auto = parser.add_argument_group(
        "latency-aware planning (--to auto; implies --benchmark, on the --runtime, --device and --threads above)"
    )
    auto.add_argument(
        "--target-speedup",
        type=float,
        metavar="X",
        help=f"end-to-end speedup to reach at the least error (default: {AutoConfig.target_speedup:g})",
    )
    auto.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="never give a layer a form whose output error (relative, on the example input) is above E",
    )
    auto.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where layer latencies are cached (default: $CONVERT_CACHE_DIR or ~/.cache/convert/latency)",
    )
    quantize_arguments(
        parser.add_argument_group(
            "INT8 quantization (writes OUTDIR/original.int8.onnx and OUTDIR/model.int8.onnx; implies --benchmark)"
        )
    )
    service_arguments(parser.add_argument_group("service (convert on a `convert serve` server instead of here)"))
    distill_arguments(parser.add_argument_group("distillation (fine-tune the converted model to match the original)"))
    calibration_arguments(parser.add_argument_group("calibration (fit the factors to real inputs, layer by layer)"))
    return parser
