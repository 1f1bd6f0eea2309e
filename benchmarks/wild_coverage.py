"""Coverage table of the zoo from the wild (tests/wild_models.py): each model from its factory, in train mode,
converted at full rank, as Markdown.

Per model: trace path; convs converted / skipped; whether the converted model is still of the user's class; its
relative output error against the original in eval mode and in train mode (same dropout seed) at the example's
batch size, the report's own figure, and the eval-mode error at another batch size (or why it fails there); ONNX
Runtime parity (static shapes); wall time of the conversion. The errors are measured here, not read from the
report, so the table says what a user would see.

    .venv/bin/python benchmarks/wild_coverage.py [--models test_resnet hf_resnet ...] [--no-onnx] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from wild_models import OTHER_BATCH, WILD  # the models the wild zoo tests

from convert import ConvertConfig, OnnxConfig, convert_model, export_onnx
from convert.errors import one_line
from convert.surgery.verify import output_rel_error, run_model


def error_in(mode: str, converted: torch.nn.Module, original: torch.nn.Module, inputs: tuple[Any, ...]) -> str:
    """The converted model's relative error against the original in `mode`, or why it does not run."""
    train = mode == "train"
    try:
        candidate = run_model(copy.deepcopy(converted).train(train), inputs)
    except Exception as exc:  # noqa: BLE001 - the table records the failure
        return f"fails: {one_line(exc)[:60]}"
    return f"{output_rel_error(run_model(copy.deepcopy(original).train(train), inputs), candidate):.1e}"


def row(name: str, folder: Path, onnx: bool) -> str:
    spec = WILD[name]
    model, inputs = spec.model(), spec.inputs()
    start = time.perf_counter()
    try:
        full = convert_model(model, inputs, ConvertConfig(rank="full"))
    except Exception as exc:  # noqa: BLE001 - the table records the failure
        return f"| {name} | {spec.library} | conversion fails: {one_line(exc)[:80]} |" + " |" * 9
    seconds = time.perf_counter() - start
    report, converted = full.report, full.model
    parity = "-"
    if onnx:
        try:
            export = export_onnx(
                converted, inputs, folder / f"{name}.onnx", OnnxConfig(dynamic_batch=False), strict=False
            )
            parity = f"{export.parity[0].max_rel:.0e}" + ("" if export.passed else " (fail)")
        except Exception as exc:  # noqa: BLE001 - the table records the failure
            parity = f"fails: {one_line(exc)[:60]}"
    kept = "yes" if type(converted) is type(model) else type(converted).__name__
    train_reported = getattr(report, "train_output_rel_error", None)
    return (
        f"| {name} | {spec.library} | {'x'.join(map(str, spec.shape))} | {report.trace} "
        f"| {report.totals.converted} / {report.totals.skipped} | {kept} "
        f"| {error_in('eval', converted, model, inputs)} | {error_in('train', converted, model, inputs)} "
        f"| {report.output_rel_error:.1e}"
        + (f" / {train_reported:.1e}" if train_reported is not None else "")
        + f" | {error_in('eval', converted, model, spec.inputs(OTHER_BATCH))} | {parity} | {seconds:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(WILD), choices=list(WILD), metavar="NAME")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the ONNX export")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    print(
        "| model | library | input | trace | converted / skipped | class kept | eval error | train error "
        f"| report (eval / train) | eval error at batch {OTHER_BATCH} | ONNX parity | conversion s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            print(row(name, Path(folder), args.onnx), flush=True)


if __name__ == "__main__":
    main()
