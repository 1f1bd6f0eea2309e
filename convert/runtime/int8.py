"""The INT8 stage of a job: both ONNX files quantized in every candidate format, each checked against float on
held-out inputs and timed on the benchmark's device; the fastest that passes the check is kept.

Why measure: which integer types are fast depends on the CPU and the provider (issue 18 measured ORT's default,
QDQ S8S8, at 0.51x the float model's speed on one CPU, and QDQ U8S8 at 2.06x), and which are accurate too (CPUs
without VNNI add pairs of uint8 x int8 products in int16, which full-range weights can overflow: 7-bit weights,
`qdq-u8s7`, do not; ONNX Runtime's quantization guide, "reduce_range").
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from convert.artifacts import CONVERTED_INT8_ONNX, CONVERTED_ONNX, ORIGINAL_INT8_ONNX, ORIGINAL_ONNX
from convert.common import Progress, no_progress, span
from convert.conversion import Conversion
from convert.distill.data import DistillData
from convert.errors import ConvertError, QuantizationError
from convert.report.schema import QuantCandidate, QuantizedModel, QuantizeReport
from convert.runtime.bench import BenchConfig, benchmark_onnx
from convert.runtime.devices import resolve_device
from convert.runtime.quantize import (
    CALIBRATION_BATCH,
    Int8Format,
    QuantizeConfig,
    SampleReader,
    calibrate,
    device_formats,
    float_ops,
    input_batch,
    prepare,
    quantize_file,
)
from convert.runtime.sessions import open_session

__all__ = ["CANDIDATE_RUNS", "CHECK_INPUTS", "accuracy", "quantize_conversion"]

CHECK_INPUTS = 128  # held-out inputs of the accuracy check, at most
CANDIDATE_RUNS = 30  # timed runs per candidate format (as many as the latency planner's per layer)
_INT8_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"})


@dataclasses.dataclass
class _Inputs:
    """What every model of the stage is fed: calibration and held-out inputs, and the original's outputs."""

    calibration: SampleReader
    check: SampleReader
    reference: list[np.ndarray]  # the original float model's outputs on `check`


def quantize_conversion(
    conversion: Conversion,
    folder: str | os.PathLike[str],
    config: QuantizeConfig,
    data: DistillData,
    bench: BenchConfig | None = None,
    progress: Progress | None = None,
) -> QuantizeReport:
    """Quantize original.onnx and model.onnx in `folder` (from `export_conversion`) into original.int8.onnx and
    model.int8.onnx, and record it as `conversion.report.quantize`.

    Args:
        conversion: the conversion whose ONNX files these are.
        folder: holds original.onnx and model.onnx; receives the INT8 files.
        config: the candidate formats, the calibration and the accuracy check.
        data: `train` calibrates (at most `config.calibration_samples` of it), `val` is held out for the check.
        bench: where the candidates are timed (device, threads, warm-up; the first batch size).
        progress: called with (what is running, fraction done).

    Raises:
        ConvertError: for too few inputs, or a model ONNX Runtime cannot quantize at all.
        QuantizationError: when no format of the converted model passes the check (both INT8 files and the report
            are written all the same, for inspection).
    """
    folder, bench, notify = Path(folder), bench or BenchConfig(), progress or no_progress
    formats = device_formats(config.formats, resolve_device(bench.device).require_provider())
    names, static = input_batch(folder / CONVERTED_ONNX)
    batch = static or CALIBRATION_BATCH
    calibration = _whole(_calibration_indices(data, config.calibration_samples), static, data.source)
    check = _whole(list(range(min(len(data.val), CHECK_INPUTS))), static, data.val_source)
    notify("running the original on the held-out inputs", 0.0)
    check_reader = SampleReader(names, data.val, check, batch)
    inputs = _Inputs(
        SampleReader(names, data.train, calibration, batch), check_reader, _run(folder / ORIGINAL_ONNX, check_reader)
    )
    timing = dataclasses.replace(bench, runs=CANDIDATE_RUNS, duration=None, batch_sizes=bench.batch_sizes[:1])
    with tempfile.TemporaryDirectory(prefix="convert-int8-") as scratch:
        models = [
            _quantize_model(folder, source, target, formats, config, inputs, timing, Path(scratch) / target, part)
            for source, target, part in (
                (ORIGINAL_ONNX, ORIGINAL_INT8_ONNX, span(notify, 0.0, 0.5)),
                (CONVERTED_ONNX, CONVERTED_INT8_ONNX, span(notify, 0.5, 1.0)),
            )
        ]
    original, converted = models
    report = QuantizeReport(
        calibration=data.source,
        synthetic=data.synthetic,
        calibration_samples=len(calibration),
        calibration_method=config.calibration_method,
        check=data.val_source,
        check_samples=len(check),
        max_quant_error=config.max_quant_error,
        device=timing.device,
        batch=timing.batch_sizes[0],
        runs=timing.runs,
        original=original,
        converted=converted,
        notes=_notes(data, config, calibration, models),
    )
    planned = conversion.report.auto.quantize if conversion.report.auto is not None else None
    if planned is not None and planned != converted.format:
        report.notes.append(
            f"the plan was timed in {planned} (the fastest for the original, accuracy unchecked); {converted.path} "
            f"kept {converted.format}, the fastest that passed the check"
        )
    conversion.report.quantize = report
    if not converted.passed:
        best = converted.chosen
        raise QuantizationError(
            f"no INT8 format of {CONVERTED_ONNX} is within `max_quant_error`={config.max_quant_error:g} of float on "
            f"the held-out inputs: the closest, {best.format}, is {best.rel_error:.3g} off"
            f"{_agreement(best.top1_agreement)}: calibrate on more real inputs (`calibration`), try "
            "`calibration_method`=percentile, or raise `max_quant_error`"
        )
    return report


def _calibration_indices(data: DistillData, samples: int) -> list[int]:
    """Which training inputs calibrate: `samples` of them (seeded), or all there are."""
    if data.train_size is None:  # synthetic: as many as asked for
        return list(range(samples))
    order = torch.randperm(data.train_size, generator=torch.Generator().manual_seed(0)).tolist()
    return sorted(order[:samples])


def _whole(indices: list[int], static: int | None, what: str) -> list[int]:
    """`indices` cut to whole batches of the ONNX files' static batch (all of them for a dynamic batch).

    Raises:
        ConvertError: when not one batch is left.
    """
    if static is None:
        return indices
    if len(indices) < static:
        raise ConvertError(
            f"{what} has {len(indices)} inputs, fewer than the ONNX files' static batch of {static}: give more "
            "inputs, or export with a dynamic batch (drop `dynamic_batch`=False)"
        )
    return indices[: len(indices) - len(indices) % static]


def _quantize_model(
    folder: Path,
    source: str,
    target: str,
    formats: Sequence[Int8Format],
    config: QuantizeConfig,
    inputs: _Inputs,
    timing: BenchConfig,
    scratch: Path,
    notify: Progress,
) -> QuantizedModel:
    """Every candidate format of `folder/source`, checked and timed; the kept one written to `folder/target`."""
    start = time.perf_counter()
    scratch.mkdir()
    notify(f"calibrating {source}", 0.0)
    prepared = prepare(folder / source, scratch / "prepared.onnx")
    ranges = calibrate(prepared, inputs.calibration, config.calibration_method, scratch / "ranges.json")
    reference = inputs.reference if source == ORIGINAL_ONNX else _run(folder / source, inputs.check)
    paths, checks = [], []
    for index, fmt in enumerate(formats):
        notify(f"quantizing {source} as {fmt.name}", 0.1 + 0.6 * index / len(formats))
        (scratch / fmt.name).mkdir()
        paths.append(quantize_file(prepared, scratch / fmt.name / target, fmt, ranges, config.calibration_method))
        if index == 0:
            _check_quantized(paths[0], prepared, fmt, source)
        outputs = _run(paths[-1], inputs.check)
        checks.append((accuracy(reference, outputs), accuracy(inputs.reference, outputs)))
    notify(f"timing the formats of {source}", 0.7)
    timed = benchmark_onnx([folder / source, *paths], timing, names=["float"] + [f.name for f in formats])
    float_ms = timed.models[0].latency[0].p50
    candidates = [
        QuantCandidate(
            fmt.name,
            fmt.label,
            model.latency[0].p50,
            float_ms / model.latency[0].p50,
            error,
            top1,
            error <= config.max_quant_error,
        )
        for fmt, model, ((error, top1), _) in zip(formats, timed.models[1:], checks, strict=True)
    ]
    passing = [c for c in candidates if c.passed]
    kept = min(passing, key=lambda c: c.latency_ms) if passing else min(candidates, key=lambda c: c.rel_error)
    index = candidates.index(kept)
    for file in (scratch / kept.format).iterdir():  # the .onnx and, over 2 GB, its external data
        shutil.move(file, folder / file.name)
    (error, top1), (vs_original, vs_original_top1) = checks[index]
    float_error, float_top1 = accuracy(inputs.reference, reference)
    return QuantizedModel(
        path=target,
        source=source,
        format=kept.format,
        passed=kept.passed,
        float_ms=float_ms,
        file_bytes=_size(folder, target),
        float_bytes=_size(folder, source),
        rel_error=error,
        top1_agreement=top1,
        float_vs_original=float_error,
        float_vs_original_top1=float_top1,
        vs_original=vs_original,
        vs_original_top1=vs_original_top1,
        float_ops=float_ops(prepared, formats[index]),
        candidates=candidates,
        seconds=time.perf_counter() - start,
    )


def _check_quantized(path: Path, prepared: Path, fmt: Int8Format, source: str) -> None:
    """Refuse a model of which ONNX Runtime quantized nothing (every op it has is one without an INT8 form)."""
    ops = {node.op_type for node in onnx.load(path, load_external_data=False).graph.node}
    if not ops & _INT8_OPS:
        kept = ", ".join(f"{op} x{n}" for op, n in float_ops(prepared, fmt).items()) or "none"
        raise ConvertError(
            f"ONNX Runtime quantizes none of the ops of {source} (ops without an INT8 form: {kept}): "
            "drop `quantize` for this model"
        )


def _run(path: Path, reader: SampleReader) -> list[np.ndarray]:
    """The outputs of `path` on ONNX Runtime's CPU provider over every feed of `reader`, concatenated."""
    session = open_session(path, "cpu", threads=torch.get_num_threads()).session
    batches = [session.run(None, feeds) for feeds in reader]
    return [np.concatenate(parts) for parts in zip(*batches, strict=True)]


def accuracy(reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> tuple[float, float | None]:
    """(||outputs - reference|| / ||reference|| over every float output, the share of inputs whose top class
    agrees in the first output shaped N x classes, or None when there is none)."""
    pairs = [(r.astype(np.float64), o) for r, o in zip(reference, outputs, strict=True) if r.dtype.kind == "f"]
    diff = sum(float(np.square(o - r).sum()) for r, o in pairs)
    norm = sum(float(np.square(r).sum()) for r, _ in pairs)
    error = float(np.sqrt(diff / norm)) if norm > 0 else float(np.sqrt(diff))
    classes = next(((r, o) for r, o in pairs if r.ndim == 2 and r.shape[1] >= 2), None)
    if classes is None:
        return error, None
    return error, float(np.mean(classes[0].argmax(1) == classes[1].argmax(1)))


def _notes(
    data: DistillData, config: QuantizeConfig, calibration: list[int], models: list[QuantizedModel]
) -> list[str]:
    notes = []
    if data.synthetic:
        notes.append(
            "calibrated and checked on synthetic inputs: the activation ranges, and the check, may not hold on "
            "real data (give `calibration`)"
        )
    if len(calibration) < config.calibration_samples:
        notes.append(f"calibrated on {len(calibration)} inputs: the data holds no more whole batches")
    for model in models:
        if model.float_ops:
            ops = ", ".join(f"{op} x{n}" for op, n in model.float_ops.items())
            notes.append(f"{model.source}: ONNX Runtime has no INT8 form for {ops}; they run in float")
        if not model.passed:
            notes.append(
                f"no format of {model.source} passed the check: {model.path} is the most accurate one, {model.format}"
            )
        if model.chosen.latency_ms > model.float_ms:
            notes.append(
                f"{model.path} ({model.format}) is slower than {model.source} on this device "
                f"({model.chosen.latency_ms:.3g} vs {model.float_ms:.3g} ms): keep the float file here"
            )
    return notes


def _agreement(top1: float | None) -> str:
    return "" if top1 is None else f" (top-1 agreement {top1:.1%})"


def _size(folder: Path, name: str) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.name == name or f.name.startswith(f"{name}."))
