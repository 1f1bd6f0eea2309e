"""The `convert` command's arguments (argparse only): the parsers of `convert`, `convert inspect`, `convert bench`."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
from pathlib import Path
from typing import NoReturn

from convert.auto import AutoConfig
from convert.cli import argtypes
from convert.distill.config import (
    AMP_MODES,
    BATCHNORM_MODES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FEATURE_WEIGHT,
    DEFAULT_LR,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
    LOSSES,
)
from convert.distill.data import SYNTHETIC
from convert.errors import BAD_INPUT
from convert.load import DTYPES
from convert.runtime.bench import DEFAULT_BATCH_SIZES, DEFAULT_RUNS, DEFAULT_WARMUP
from convert.runtime.config import BENCH_DTYPES, RUNTIMES
from convert.runtime.devices import DEVICES
from convert.runtime.parity import DEFAULT_ATOL
from convert.runtime.quantize import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_FORMATS,
    DEFAULT_MAX_QUANT_ERROR,
    FORMATS,
)
from convert.surgery.calibrate import DEFAULT_SAMPLES
from convert.surgery.config import TARGETS, TRANSPOSED_FORMS

__all__ = ["LOG_LEVELS", "Parser", "bench_parser", "convert_parser", "inspect_parser", "version"]

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (the full usage is one --help away); epilogs (the
    examples) keep their lines."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(BAD_INPUT.exit_code, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    """The installed package's version (or "unknown" when run from a source tree that is not installed)."""
    try:
        return importlib.metadata.version("convert")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _logging_arguments(parser: argparse.ArgumentParser) -> None:
    """How much a command says on stderr, and its version: what every subcommand shares."""
    group = parser.add_argument_group("messages")
    loudness = group.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log details and show tracebacks")
    loudness.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bar, notes or warnings on stderr: results on stdout, errors on stderr",
    )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="the libraries' log level on stderr (default: info with --verbose, else warning)",
    )
    group.add_argument("--version", action="version", version=f"%(prog)s {version()}")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and the conversion: what `convert` and `convert inspect` share."""
    source = parser.add_argument_group("model")
    source.add_argument(
        "model",
        help="package.module:callable (e.g. torchvision.models:resnet18), timm:NAME (timm.create_model) or "
        "torchvision:NAME (torchvision.models.get_model), never pretrained; a .pt2 archive (torch.export.save), "
        "or a whole-model pickle (torch.save(model))",
    )
    source.add_argument(
        "--weights",
        help="state dict for a factory-built model (.safetensors, or .pt/.pth loaded with weights_only=True)",
    )
    source.add_argument(
        "--model-arg",
        action="append",
        type=argtypes.model_arg,
        metavar="NAME=VALUE",
        help="a keyword argument of the factory, the value a Python literal (else a string); repeat for several, "
        "e.g. --model-arg num_classes=10 --model-arg in_chans=1",
    )
    source.add_argument(
        "--input-shape",
        action="append",
        type=argtypes.shape,
        metavar="N,C,...",
        help="example input shape, repeat for several inputs (default: the .pt2's example inputs)",
    )
    source.add_argument("--input-dtype", default="float32", choices=list(DTYPES), help="default: float32")
    options = parser.add_argument_group("conversion")
    options.add_argument("--to", dest="target", default="separable", choices=TARGETS, help="default: separable")
    rank = options.add_mutually_exclusive_group()
    rank.add_argument(
        "--rank",
        type=argtypes.rank,
        help="filters per group: N or 'full' (exact); default 1 for "
        "separable, C_out/groups for grouped; clamped to full rank",
    )
    rank.add_argument(
        "--energy",
        type=float,
        help="per layer, the smallest rank keeping this fraction of the spectral energy, e.g. 0.95",
    )
    options.add_argument("--groups", type=int, help="groups for --to grouped (must divide C_in)")
    options.add_argument(
        "--no-pointwise",
        dest="pointwise",
        action="store_false",
        help="--to grouped: keep W's block diagonal as one grouped conv, no 1x1 after it (lossy)",
    )
    options.add_argument(
        "--transposed",
        default="separable",
        choices=TRANSPOSED_FORMS,
        help="transposed convs: depthwise transposed conv + 1x1 conv (exact at full rank), or skip them "
        "(default: separable)",
    )
    options.add_argument(
        "--include-grouped",
        action="store_true",
        help="also factorize convs that are grouped already (1 < groups < C_in), group by group",
    )
    options.add_argument("--include", metavar="REGEX", help="convert only layers whose name matches")
    options.add_argument("--exclude", metavar="REGEX", help="skip layers whose name matches")
    options.add_argument(
        "--min-channels",
        type=int,
        default=1,
        metavar="N",
        help="skip layers with fewer input or output channels (default: 1)",
    )
    _logging_arguments(parser)


def convert_parser() -> argparse.ArgumentParser:
    """`convert MODEL ...`: the options of a job (conversion, ONNX, benchmark, --to auto, service, distillation)."""
    parser = Parser(
        prog="convert",
        description="Rewrite standard convolutions into depthwise-separable or grouped ones (truncated SVD). "
        "Subcommands: `convert inspect MODEL ...` shows what each target would save; "
        "`convert bench A.onnx [B.onnx ...]` times ONNX files side by side (`--runtime torch`: PyTorch models); "
        "`convert serve [--port 50051] [--data-dir DIR]` runs the gRPC service (see `convert serve --help`).",
        epilog=_examples(
            "convert torchvision:resnet18 --input-shape 1,3,224,224  # writes torchvision.resnet18-separable/",
            "convert timm:resnet50 --model-arg num_classes=10 --input-shape 1,3,224,224 --to grouped --groups 4 -o out",
            "convert mynet:build --weights best.safetensors --input-shape 1,3,32,32 --rank full --onnx -o out",
            "convert model.pt2 --to auto --target-speedup 2 --device cpu -o out --overwrite",
            "convert model.pt --input-shape 1,3,32,32 --distill images/ --steps 600 -o out",
        ),
    )
    _common_arguments(parser)
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
    output.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in OUTDIR (refused without it; --resume continues them)",
    )
    output.add_argument("--json", action="store_true", help="print report.json on stdout, and nothing else")
    output.add_argument(
        "--strict",
        action="store_true",
        help="a warning stops the run (exit status 1, nothing written): e.g. a model with no conv to convert",
    )
    onnx = parser.add_argument_group("ONNX export (writes OUTDIR/original.onnx and OUTDIR/model.onnx)")
    onnx.add_argument(
        "--onnx",
        action="store_true",
        help="export both models and check ONNX Runtime against PyTorch on the example input and another batch size",
    )
    onnx.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    onnx.add_argument(
        "--static-shapes",
        action="store_true",
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
    bench.add_argument(
        "--benchmark",
        action="store_true",
        help="time the original and the converted model side by side: original.onnx and model.onnx on ONNX Runtime, "
        "or (--runtime torch) the PyTorch models themselves; adds a table and benchmark.png",
    )
    _benchmark_arguments(
        bench,
        device_help="where to distill (torch: auto is CUDA when torch sees a GPU; tensorrt trains on CUDA) and to "
        "benchmark (ONNX Runtime provider: auto is CUDA when a session really runs there); default: auto",
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
    _quantize_arguments(
        parser.add_argument_group(
            "INT8 quantization (writes OUTDIR/original.int8.onnx and OUTDIR/model.int8.onnx; implies --benchmark)"
        )
    )
    service = parser.add_argument_group("service (convert on a `convert serve` server instead of here)")
    service.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="upload the model and any --distill/--val tensor files (their bytes, not loaded here) and convert it "
        "there; results are downloaded into OUTDIR",
    )
    service.add_argument(
        "--auth-token",
        default=os.environ.get("CONVERT_AUTH_TOKEN"),
        help="the server's token (default: $CONVERT_AUTH_TOKEN)",
    )
    service.add_argument(
        "--accelerator",
        metavar="TYPE",
        help="on a server on a Ray cluster: run on a node with this Ray accelerator type (e.g. H100), on one GPU",
    )
    service.add_argument(
        "--resource",
        dest="resources",
        action="append",
        type=argtypes.resource,
        metavar="NAME=AMOUNT",
        help="on a server on a Ray cluster: run on a node with this Ray custom resource, taking AMOUNT; repeatable",
    )
    service.add_argument("--tls", action="store_true", help="speak TLS, trusting the system's CAs")
    service.add_argument("--tls-ca", type=Path, metavar="PEM", help="speak TLS, trusting this CA certificate")
    _distill_arguments(parser.add_argument_group("distillation (fine-tune the converted model to match the original)"))
    calibration = parser.add_argument_group("calibration (fit the factors to real inputs, layer by layer)")
    calibration.add_argument(
        "--calibrate",
        action="append",
        nargs="?",
        const="",
        metavar="DATA",
        help=f"unlabeled inputs in --distill's forms ('{SYNTHETIC}', a folder of images, a tensor file; repeat for a "
        "file per model input); without DATA: the --distill data. Each converted layer is fitted, in execution "
        "order, to reproduce the original layer's outputs from its inputs in the model converted so far; "
        "--quantize int8 calibrates its activation ranges on the same DATA",
    )
    calibration.add_argument(
        "--calibration-samples",
        type=int,
        metavar="N",
        help=f"calibrate on at most N inputs (default: {DEFAULT_SAMPLES}, a seeded random choice of more; "
        f"--quantize: {DEFAULT_CALIBRATION_SAMPLES})",
    )
    return parser


def _quantize_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of --quantize; each defaults to None so that one given without --quantize is caught."""
    group.add_argument(
        "--quantize",
        choices=("int8",),
        help="quantize both ONNX files with ONNX Runtime (static, per-channel weights): every --quant-formats format "
        "is checked against float on held-out inputs and timed on --device; the fastest that passes is kept; with "
        "--to auto the plan is for the INT8 runtime",
    )
    group.add_argument(
        "--calibration-method", choices=list(CALIBRATION_METHODS), help="activation ranges (default: minmax)"
    )
    group.add_argument(
        "--quant-formats",
        type=argtypes.formats,
        metavar="F,F,...",
        help=f"candidate formats, of {', '.join(FORMATS)} (default: {','.join(DEFAULT_FORMATS)}; "
        "u8s7: 7-bit weights, for CPUs without VNNI)",
    )
    group.add_argument(
        "--max-quant-error",
        type=float,
        metavar="E",
        help="the check: largest relative output error of INT8 against float on held-out inputs "
        f"(default: {DEFAULT_MAX_QUANT_ERROR:g}); when no format passes, the files go to OUTDIR.failed-parity/ "
        "and the exit status is 3",
    )


def _distill_arguments(group: argparse._ArgumentGroup) -> None:
    """Options of --distill; each defaults to None so that one given without --distill is caught."""
    group.add_argument(
        "--distill",
        action="append",
        metavar="DATA",
        help=f"unlabeled inputs: '{SYNTHETIC}', a folder of images (ImageFolder layout or flat), or a tensor file "
        "shaped (N, ...) (.pt, .npy, .npz, .safetensors); repeat for a file per model input",
    )
    group.add_argument(
        "--val",
        action="append",
        metavar="DATA",
        help="validation inputs, in the same forms (default: 10%% of DATA held out, at most 1000)",
    )
    length = group.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, metavar="N", help=f"optimizer steps (default: {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=float, metavar="E", help="passes over DATA instead of --steps")
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help=f"inputs per step, over all processes (default: {DEFAULT_BATCH_SIZE})",
    )
    group.add_argument(
        "--lr", type=float, help=f"peak learning rate, AdamW with warm-up and cosine decay (default: {DEFAULT_LR:g})"
    )
    group.add_argument(
        "--feature-weight",
        type=float,
        metavar="W",
        help="weight of matching each converted layer's output to the original conv's "
        f"(default: {DEFAULT_FEATURE_WEIGHT:g}; 0: outputs only)",
    )
    group.add_argument(
        "--loss",
        choices=LOSSES,
        help="output loss: auto (KL for outputs shaped N x classes, else relative MSE), kl, mse (default: auto)",
    )
    group.add_argument(
        "--temperature", type=float, metavar="T", help=f"of the KL loss (default: {DEFAULT_TEMPERATURE:g})"
    )
    group.add_argument(
        "--batchnorm",
        choices=BATCHNORM_MODES,
        help="student BatchNorm: update (batch statistics, running averages updated) or freeze (default: update)",
    )
    group.add_argument("--amp", choices=AMP_MODES, help="autocast on CUDA: auto is bf16 where supported, else fp16")
    group.add_argument("--seed", type=int, metavar="S", help="batch order and synthetic inputs (default: 0)")
    group.add_argument("--workers", type=int, metavar="N", help="DataLoader processes decoding images (default: 0)")
    group.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="training processes sharing every batch (DDP), as Ray Train workers on the Ray cluster of RAY_ADDRESS "
        "or of the --server (default: 1; under torchrun leave it out)",
    )
    group.add_argument(
        "--image-mean",
        type=argtypes.floats,
        metavar="M,M,M",
        help="per channel, for image folders (default: ImageNet's for 3 channels, else 0.5)",
    )
    group.add_argument(
        "--image-std", type=argtypes.floats, metavar="S,S,S", help="per channel (default: ImageNet's or 0.5)"
    )
    group.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue from OUTDIR/distill-checkpoint.pt, which every distillation writes",
    )


def bench_parser() -> argparse.ArgumentParser:
    """`convert bench FILE ...`: the benchmark's options."""
    parser = Parser(
        prog="convert bench",
        description="Time ONNX files side by side on ONNX Runtime, or (--runtime torch) PyTorch models on PyTorch, "
        "alternating run by run; speedups are relative to the first model.",
        epilog=_examples(
            "convert bench out/original.onnx out/model.onnx --device cpu --batch-sizes 1,8",
            "convert bench a.onnx b.onnx --duration 5 --json > timing.json",
        ),
    )
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=".onnx files; with --runtime torch: .pt2 archives, whole-model pickles (.pt), factory specs "
        "(package.module:callable), or convert output folders (their model.pt)",
    )
    options = parser.add_argument_group("benchmark")
    _benchmark_arguments(options)
    options.add_argument(
        "--input-shape",
        action="append",
        type=argtypes.shape,
        metavar="N,C,...",
        help="--runtime torch: example input shape, repeat for several inputs (default: a .pt2's example inputs, or "
        "an output folder's report.json); the batch is set by --batch-sizes",
    )
    options.add_argument("--input-dtype", default="float32", choices=list(DTYPES), help="default: float32")
    options.add_argument("--json", action="store_true", help="print the results as JSON on stdout, and nothing else")
    options.add_argument("--plot", type=Path, metavar="PNG", help="also write a plot of latency per batch size")
    _logging_arguments(parser)
    return parser


def _benchmark_arguments(
    group: argparse._ArgumentGroup,
    device_help: str = "ONNX Runtime provider (default: auto, CUDA when a session really runs there, else CPU)",
) -> None:
    group.add_argument("--device", default="auto", choices=DEVICES, help=device_help)
    group.add_argument("--threads", type=int, metavar="N", help="CPU intra-op threads (default: the physical cores)")
    length = group.add_mutually_exclusive_group()
    length.add_argument(
        "--runs",
        type=int,
        default=DEFAULT_RUNS,
        metavar="N",
        help=f"timed runs per model and batch size (default: {DEFAULT_RUNS})",
    )
    length.add_argument(
        "--duration", type=float, metavar="S", help="time each batch size for S seconds instead of --runs"
    )
    group.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        metavar="N",
        help=f"untimed runs first (default: {DEFAULT_WARMUP})",
    )
    group.add_argument(
        "--batch-sizes",
        type=argtypes.batch_sizes,
        default=DEFAULT_BATCH_SIZES,
        metavar="B,B,...",
        help="batch sizes to time (default: 1)",
    )
    group.add_argument(
        "--runtime",
        default="ort",
        choices=RUNTIMES,
        help="ort: ONNX Runtime on the ONNX files; torch: the PyTorch models themselves (default: ort)",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="--runtime torch: torch.compile the models (default mode, a static graph per batch size) instead of eager",
    )
    group.add_argument(
        "--bench-dtype",
        default="float32",
        choices=BENCH_DTYPES,
        help="--runtime torch: the timed models' dtype (default: float32; ONNX Runtime times the float32 export)",
    )
    group.add_argument(
        "--channels-last",
        action="store_true",
        help="--runtime torch: models and inputs in the channels-last memory format",
    )


def inspect_parser() -> argparse.ArgumentParser:
    """`convert inspect MODEL ...`: the model and conversion options of a job, nothing it would write."""
    parser = Parser(
        prog="convert inspect",
        description="Per standard conv: what separable (and grouped, with --groups) would save. Writes nothing.",
        epilog=_examples(
            "convert inspect torchvision:resnet18 --input-shape 1,3,224,224 --groups 4",
            "convert inspect mynet:build --input-shape 1,3,32,32 --rank 2 --include '^layer' --json",
        ),
    )
    _common_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the rows as JSON on stdout ({target: [row per conv]}, the fields of report.json's layers)",
    )
    return parser


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)
