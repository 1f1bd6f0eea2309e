"""INT8 static quantization of an ONNX file with ONNX Runtime: prepare, calibrate once, write each format.

Reference: ONNX Runtime's quantization guide, https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
(static quantization, QDQ and QOperator formats, per-channel weights, the pre-processing step).

Three steps, so that the calibration runs once for every format tried: `prepare` (ONNX Runtime's basic graph
optimizations, which fold BatchNorm into the convs, then shape inference), `calibrate` (the activation ranges on
real inputs, saved as ONNX Runtime's calibration cache), `quantize_file` (one format, from the cache). ONNX
Runtime's own tools open their sessions with a thread pool of their own, which a process that has made the
benchmark's shared pool may not do; here every session is made with `sessions.session_options`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import (
    EntropyCalibrater,
    MinMaxCalibrater,
    PercentileCalibrater,
    save_tensors_data,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch.utils.data import Dataset

from convert.distill.datasets import Sample
from convert.errors import ConvertError, one_line
from convert.runtime.export import quiet_unless_verbose
from convert.runtime.sessions import random_input, session_options

__all__ = [
    "CALIBRATION_BATCH",
    "CALIBRATION_METHODS",
    "DEFAULT_CALIBRATION_SAMPLES",
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_QUANT_ERROR",
    "FORMATS",
    "Feeds",
    "PROVIDER_FORMATS",
    "Int8Format",
    "QuantizeConfig",
    "SampleReader",
    "calibrate",
    "device_formats",
    "float_ops",
    "input_batch",
    "prepare",
    "quantize_file",
    "quantize_for_timing",
]


@dataclasses.dataclass(frozen=True)
class Int8Format:
    """One way to write an INT8 model: ONNX Runtime's graph format and the integer types."""

    name: str
    # QuantizeLinear/DequantizeLinear pairs around the float ops, which ORT fuses into integer kernels (QDQ);
    # else the QLinear* ops themselves (QOperator)
    qdq: bool
    signed_activations: bool  # int8 activations (S8); else uint8 (U8). Weights are int8 (per channel) in every format
    # 7-bit weights: CPUs without VNNI add pairs of uint8 x int8 products in int16, which full-range weights overflow
    reduce_range: bool

    @property
    def label(self) -> str:
        weights = "S7 (7-bit weights)" if self.reduce_range else "S8"
        return f"{'QDQ' if self.qdq else 'QOperator'} {'S8' if self.signed_activations else 'U8'}{weights}"


FORMATS: dict[str, Int8Format] = {
    f.name: f
    for f in (
        Int8Format("qdq-u8s8", qdq=True, signed_activations=False, reduce_range=False),
        Int8Format("qdq-u8s7", qdq=True, signed_activations=False, reduce_range=True),
        Int8Format("qdq-s8s8", qdq=True, signed_activations=True, reduce_range=False),  # ORT's default
        Int8Format("qop-u8s8", qdq=False, signed_activations=False, reduce_range=False),
        Int8Format("qop-u8s7", qdq=False, signed_activations=False, reduce_range=True),
        Int8Format("qop-s8s8", qdq=False, signed_activations=True, reduce_range=False),
    )
}
# The candidates tried by default: unsigned and signed activations, full and 7-bit weights, both graph formats.
# qop-s8s8 is left out: ORT itself warns that it is slow on x86 (2.6x slower than float here).
DEFAULT_FORMATS: tuple[str, ...] = ("qdq-u8s8", "qdq-u8s7", "qdq-s8s8", "qop-u8s8")
# The formats each ONNX Runtime provider can run: the QLinear* ops of QOperator have CPU kernels only; TensorRT
# builds INT8 engines from QDQ graphs with int8 activations and weights.
PROVIDER_FORMATS: dict[str, tuple[str, ...]] = {
    "cpu": tuple(FORMATS),
    "cuda": ("qdq-u8s8", "qdq-u8s7", "qdq-s8s8"),
    "tensorrt": ("qdq-s8s8",),
}
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,  # the observed range of each tensor
    "entropy": CalibrationMethod.Entropy,  # the range that keeps the distribution's KL divergence least (TensorRT's)
    "percentile": CalibrationMethod.Percentile,  # the 99.999th percentile of |values|: outliers clipped
}
DEFAULT_CALIBRATION_SAMPLES = 128  # inputs the activation ranges are measured on (ORT's examples use 100 or so)
DEFAULT_MAX_QUANT_ERROR = 0.1  # relative output error of INT8 against float on held-out inputs; see BENCHMARKS.md
CALIBRATION_BATCH = 16  # inputs per calibration (and accuracy check) run, when the batch is dynamic
# Ops the quantizer has no INT8 form for but that move numbers without arithmetic: not worth naming as float.
_NO_ARITHMETIC = frozenset(
    {"Shape", "Constant", "ConstantOfShape", "Identity", "Cast", "Expand", "Range", "Size", "Tile", "NonZero"}
)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """INT8 quantization of both models' ONNX files after the conversion (`quantize`: model.int8.onnx and
    original.int8.onnx). Every format in `formats` that the benchmark's device runs is written, checked against
    the float model on held-out inputs and timed; the fastest that passes the check is kept."""

    # The inputs to calibrate on, in the forms `convert.distill.data.load_data` takes ("synthetic", a folder of
    # images, a tensor file, or a file per model input); None: the distillation's inputs (`distill`).
    calibration: tuple[str, ...] | None = None
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES  # inputs the activation ranges are measured on
    calibration_method: str = "minmax"  # a key of CALIBRATION_METHODS
    formats: tuple[str, ...] = DEFAULT_FORMATS  # candidate formats (keys of FORMATS)
    # The accuracy check: the largest ||y_int8 - y_float|| / ||y_float|| on the held-out inputs that a format may
    # have; when no format of the converted model is within it, the job fails (the files are kept for inspection).
    max_quant_error: float = DEFAULT_MAX_QUANT_ERROR

    def __post_init__(self) -> None:
        if self.calibration is not None and not self.calibration:
            raise ConvertError("`calibration` is empty: give the calibration inputs, or leave it unset")
        if self.calibration_samples < 1:
            raise ConvertError(
                f"`calibration_samples`={self.calibration_samples} is not valid: use 1 or more, e.g. 128"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConvertError(
                f"unknown calibration method {self.calibration_method!r}: use one of {', '.join(CALIBRATION_METHODS)}"
            )
        unknown = [name for name in self.formats if name not in FORMATS]
        if unknown or not self.formats or len(set(self.formats)) != len(self.formats):
            raise ConvertError(
                f"`formats` {','.join(self.formats) or '(none)'} is not valid: give distinct names from "
                f"{', '.join(FORMATS)}"
            )
        if not self.max_quant_error > 0:
            raise ConvertError(
                f"`max_quant_error`={self.max_quant_error} is not valid: use a positive fraction, e.g. 0.1"
            )


def device_formats(formats: Sequence[str], provider: str) -> list[Int8Format]:
    """The formats of `formats` that `provider` (cpu | cuda | tensorrt) runs, in the order given.

    Raises:
        ConvertError: when it runs none of them.
    """
    runnable = [FORMATS[name] for name in formats if name in PROVIDER_FORMATS[provider]]
    if not runnable:
        raise ConvertError(
            f"none of `formats` {','.join(formats)} runs on {provider}: use {','.join(PROVIDER_FORMATS[provider])}"
        )
    return runnable


# --- the three steps ------------------------------------------------------------------------------------------------


def prepare(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """ONNX Runtime's quantization pre-processing of `path` into `out`: the basic graph optimizations (BatchNorm
    folded into the convs, constants folded), then shape inference (`quant_pre_process` without its optimization
    step, which would open a session with a thread pool of its own).

    Raises:
        ConvertError: when ONNX Runtime cannot load or process the file.
    """
    out = Path(out)
    external = _has_external_data(path)
    optimized = out.with_name(f"{out.stem}.optimized.onnx")
    options = session_options(1)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(optimized)
    if external:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{optimized.name}.data"
        )
    try:
        with quiet_unless_verbose():
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            quant_pre_process(str(optimized), str(out), skip_optimization=True, save_as_external_data=external)
    except Exception as e:  # ORT's refusal of the graph is what the user reads
        raise ConvertError(f"ONNX Runtime cannot prepare {Path(path).name} for quantization ({one_line(e)})") from e
    return out


Feeds = Iterable[dict[str, np.ndarray]]  # session inputs by name, one batch each


class SampleReader:
    """Feeds of the samples `indices` of a Dataset, `batch` at a time (the last batch may be smaller), for
    calibration and the accuracy check; each iteration reads them again."""

    def __init__(self, names: Sequence[str], data: Dataset[Sample], indices: Sequence[int], batch: int) -> None:
        self.names, self.data, self.indices, self.batch = list(names), data, list(indices), batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.indices), self.batch):
            samples = [self.data[i] for i in self.indices[start : start + self.batch]]
            yield {name: np.stack([sample[k].numpy() for sample in samples]) for k, name in enumerate(self.names)}


class _Reader(CalibrationDataReader):
    """ONNX Runtime's interface to feeds: one pass over them."""

    def __init__(self, feeds: Feeds) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def input_batch(path: str | os.PathLike[str]) -> tuple[list[str], int | None]:
    """The graph inputs of `path` (initializers excluded) and their static batch (None: dynamic)."""
    graph = onnx.load(path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs = [arg for arg in graph.input if arg.name not in weights]
    dims = [arg.type.tensor_type.shape.dim for arg in inputs]
    static = {d[0].dim_value for d in dims if d and d[0].HasField("dim_value")}
    return [arg.name for arg in inputs], (static.pop() if len(static) == 1 else None)


# Per calibration method, ORT's calibrator and the settings quantize_static gives it (create_calibrator's).
_CALIBRATORS = {
    "minmax": (MinMaxCalibrater, {}),
    "entropy": (EntropyCalibrater, {"num_bins": 128, "num_quantized_bins": 128}),
    "percentile": (PercentileCalibrater, {"num_bins": 2048, "percentile": 99.999, "symmetric": True}),
}


def calibrate(prepared: str | os.PathLike[str], feeds: Feeds, method: str, out: str | os.PathLike[str]) -> Path:
    """Measure the activation ranges of `prepared` on `feeds` and save them as ONNX Runtime's calibration cache
    (JSON) at `out`, which `quantize_file` reads.

    Raises:
        ConvertError: when ONNX Runtime fails on the inputs.
    """
    kind, settings = _CALIBRATORS[method]
    with tempfile.TemporaryDirectory(prefix="convert-calibrate-") as folder:
        try:
            with quiet_unless_verbose():
                calibrator = kind(
                    str(prepared),
                    _quantizable(qdq=True),
                    augmented_model_path=str(Path(folder) / "augmented.onnx"),
                    use_external_data_format=_has_external_data(prepared),
                    **settings,
                )
                calibrator.augment_graph()
                options = session_options(None)
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                calibrator.infer_session = ort.InferenceSession(
                    calibrator.augmented_model_path, options, providers=["CPUExecutionProvider"]
                )
                calibrator.collect_data(_Reader(feeds))
                ranges = calibrator.compute_data()
        except Exception as e:  # ORT's failure on these inputs is the user's to fix
            raise ConvertError(f"calibrating {Path(prepared).name} failed ({one_line(e)})") from e
    save_tensors_data(ranges, out)
    return Path(out)


def quantize_file(
    prepared: str | os.PathLike[str],
    out: str | os.PathLike[str],
    fmt: Int8Format,
    ranges: str | os.PathLike[str],
    method: str = "minmax",
) -> Path:
    """Write `prepared` quantized in `fmt` (static, per-channel int8 weights) to `out`, with the activation ranges
    that `calibrate` saved at `ranges` (no inference runs).

    Raises:
        ConvertError: when ONNX Runtime's quantizer fails on the graph.
    """
    try:
        with quiet_unless_verbose():
            quantize_static(
                str(prepared),
                str(out),
                None,
                quant_format=QuantFormat.QDQ if fmt.qdq else QuantFormat.QOperator,
                per_channel=True,
                reduce_range=fmt.reduce_range,
                activation_type=QuantType.QInt8 if fmt.signed_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                use_external_data_format=_has_external_data(prepared),
                calibrate_method=CALIBRATION_METHODS[method],
                calibration_cache_path=str(ranges),
            )
    except Exception as e:  # ORT's refusal of the graph is what the user reads
        raise ConvertError(f"ONNX Runtime cannot quantize {Path(prepared).name} as {fmt.name} ({one_line(e)})") from e
    return Path(out)


def quantize_for_timing(path: str | os.PathLike[str], out: str | os.PathLike[str], fmt: Int8Format) -> Path:
    """`path` quantized in `fmt`, calibrated on one batch of seeded random inputs (at its static batch, else 1): a
    file to time, not to use (latency does not depend on the ranges). The same file gives the same bytes, so a
    timing cache keyed by the content hits."""
    out = Path(out)
    prepared = prepare(path, out.with_name(f"{out.stem}.prepared.onnx"))
    session = ort.InferenceSession(str(prepared), session_options(1), providers=["CPUExecutionProvider"])
    batch = input_batch(prepared)[1] or 1
    rng = np.random.default_rng(0)
    feeds = {arg.name: random_input(arg, batch, rng, path) for arg in session.get_inputs()}
    ranges = calibrate(prepared, [feeds], "minmax", out.with_name(f"{out.stem}.ranges.json"))
    return quantize_file(prepared, out, fmt, ranges)


def float_ops(prepared: str | os.PathLike[str], fmt: Int8Format) -> dict[str, int]:
    """Op types (and counts) of `prepared` that ONNX Runtime's quantizer has no INT8 form for in `fmt`: they run
    in float between a DequantizeLinear and a QuantizeLinear. Ops that move values without arithmetic are not
    counted."""
    quantizable = _quantizable(fmt.qdq)
    graph = onnx.load(prepared, load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node if n.op_type not in quantizable and n.op_type not in _NO_ARITHMETIC)
    return dict(counts.most_common())


def _quantizable(qdq: bool) -> list[str]:
    """The op types quantize_static quantizes by default in a format (its own choice of registries)."""
    return sorted(set(QLinearOpsRegistry) | (set(QDQRegistry) if qdq else set()))


def _has_external_data(path: str | os.PathLike[str]) -> bool:
    graph = onnx.load(path, load_external_data=False).graph
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
