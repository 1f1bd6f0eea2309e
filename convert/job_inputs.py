"""A job's data: where its distillation and calibration inputs come from (`DistillJob`, `CalibrateJob`), and their
loading and checks before any work (`prepare_inputs`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from convert.artifacts import DISTILL_CHECKPOINT
from convert.distill.config import DistillConfig
from convert.distill.data import DistillData, image_transform, load_data
from convert.distill.datasets import ImageTransform
from convert.distill.state import load_checkpoint
from convert.distill.trainer import check_distill_options
from convert.errors import ConvertError
from convert.forward import input_names, order_by_name
from convert.load import LoadedModel, make_inputs
from convert.surgery.calibrate import DEFAULT_SAMPLES, Calibration, CalibrationConfig, prepare_calibration

if TYPE_CHECKING:  # job.py imports this module: JobOptions for the annotations only
    from convert.job import JobOptions

__all__ = [
    "CalibrateJob",
    "DistillJob",
    "JobInputs",
    "PreparedDistill",
    "example_inputs",
    "prepare_inputs",
    "quantize_sources",
]


@dataclasses.dataclass(frozen=True)
class DistillJob:
    """--distill: where the training inputs come from, and how to train."""

    # "synthetic", a folder of images, or a tensor file shaped (N, ...); several: a file per model input.
    data: tuple[str, ...]
    config: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    # Validation inputs in the same forms; None: a split of `data` is held out.
    val: tuple[str, ...] | None = None
    # Image normalisation per channel; None: ImageNet's for 3 channels, else 0.5 (see convert.distill.data).
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    # Continue from OUTDIR/distill-checkpoint.pt, written by an earlier run that stopped.
    resume: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DistillJob:
        tuples = {
            k: None if data.get(k) is None else tuple(data[k]) for k in ("data", "val", "image_mean", "image_std")
        }
        return cls(**{**data, **tuples, "config": DistillConfig(**data.get("config", {}))})


@dataclasses.dataclass(frozen=True)
class CalibrateJob:
    """--calibrate: the unlabeled inputs that calibration (and quantization) fits to, and how many of them."""

    # "synthetic", a folder of images, or a tensor file shaped (N, ...); several: a file per model input.
    # Empty: the distillation's training data (`distill`).
    data: tuple[str, ...] = ()
    samples: int = DEFAULT_SAMPLES  # at most this many inputs (a seeded random choice of a larger source)

    def __post_init__(self) -> None:
        CalibrationConfig(self.data, samples=self.samples)  # its checks

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrateJob:
        return cls(**{**data, "data": tuple(data.get("data", ()))})


@dataclasses.dataclass(frozen=True)
class PreparedDistill:
    """A distillation ready to run: its data loaded and checked, its options, the checkpoint it resumes from."""

    data: DistillData
    config: DistillConfig
    checkpoint: dict | None  # None: a fresh run


@dataclasses.dataclass(frozen=True)
class JobInputs:
    """Every input a job loads besides the model's example inputs; None where the job has no such stage."""

    distill: PreparedDistill | None
    calibration: Calibration | None  # what the conversion's factors are fitted to
    quantize: DistillData | None  # what INT8 quantization calibrates on (and holds out for its check)


def example_inputs(
    loaded: LoadedModel,
    shapes: Sequence[Sequence[int]] | None,
    dtype: str = "float32",
    names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random example inputs of `shapes`, else the ones stored with the model (a .pt2 archive's).

    Args:
        names: per shape, the forward parameter it is for: the inputs come back in the forward's order.

    Raises:
        ConvertError: when neither is there, or for names the forward does not take by position.
    """
    if shapes:
        order = range(len(shapes)) if names is None else order_by_name(loaded.model, names)
        return make_inputs([shapes[i] for i in order], dtype)
    if loaded.example_inputs is not None:
        return loaded.example_inputs
    raise ConvertError("the example input shape is unknown: set `input_shapes`, e.g. `input_shapes`=1,3,224,224")


def prepare_inputs(
    options: JobOptions, loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], outdir: str | os.PathLike[str]
) -> JobInputs:
    """Load and check the distillation, quantization and calibration inputs, so that bad data fails before any work.

    Args:
        options: the job (its `distill`, `quantize` and `calibrate`).
        loaded: the model, for its input names.
        inputs: the example inputs, which the data must match.
        outdir: the job's output folder, where a resumed distillation's checkpoint is.

    Returns:
        The inputs of each stage the job has.

    Raises:
        ConvertError: for data that cannot be read or does not fit the model.
    """
    distill = _prepare_distill(options.distill, loaded, inputs, outdir)
    return JobInputs(
        distill=distill,
        quantize=_quantize_data(options, loaded, inputs, distill),
        calibration=_prepare_calibration(options, loaded, inputs),
    )


def quantize_sources(options: JobOptions) -> tuple[str, ...] | None:
    """What `quantize` calibrates on: its `calibration`, else the data `calibrate` names (None: the distillation's)."""
    if options.quantize.calibration is not None:
        return options.quantize.calibration
    if options.calibrate is not None and options.calibrate.data:
        return tuple(str(source) for source in options.calibrate.data)
    return None


def _prepare_distill(
    job: DistillJob | None, loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], outdir: str | os.PathLike[str]
) -> PreparedDistill | None:
    """The data, options and checkpoint of a distillation, all checked; None without one."""
    if job is None:
        return None
    checkpoint = load_checkpoint(Path(outdir) / DISTILL_CHECKPOINT) if job.resume else None
    data = load_data(
        list(job.data),
        inputs,
        val=None if job.val is None else list(job.val),
        input_names=input_names(loaded.model),
        transform=_image_transform(job, inputs),
        seed=job.config.seed,
    )
    check_distill_options(job.config, data)
    return PreparedDistill(data, job.config, checkpoint)


def _image_transform(job: DistillJob | None, inputs: tuple[torch.Tensor, ...]) -> ImageTransform | None:
    """The transform of image folders: the default one, unless the distillation sets `image_mean`/`image_std`."""
    if job is None or (job.image_mean is None and job.image_std is None):
        return None
    if inputs[0].dim() != 4:
        raise ConvertError("`image_mean` and `image_std` go with a folder of images and an N,C,H,W input")
    return image_transform(inputs[0].shape, job.image_mean, job.image_std)


def _quantize_data(
    options: JobOptions, loaded: LoadedModel, inputs: tuple[torch.Tensor, ...], distill: PreparedDistill | None
) -> DistillData | None:
    """The inputs `quantize` calibrates on (and holds out for its check), all checked; None without `quantize`."""
    if options.quantize is None:
        return None
    sources = quantize_sources(options)
    if sources is None:
        return distill.data  # `preflight` saw to it that there is a distillation
    return load_data(
        list(sources),
        inputs,
        input_names=input_names(loaded.model),
        transform=_image_transform(options.distill, inputs),
    )


def _prepare_calibration(
    options: JobOptions, loaded: LoadedModel, inputs: tuple[torch.Tensor, ...]
) -> Calibration | None:
    """The calibration inputs, loaded and checked (the distillation's training data when `calibrate` names none);
    None without calibration."""
    job = options.calibrate
    if job is None:
        return None
    data = job.data or (options.distill.data if options.distill is not None else ())
    source = list(data) if len(data) > 1 else data[0]
    config = CalibrationConfig(source, samples=job.samples, transform=_image_transform(options.distill, inputs))
    return prepare_calibration(config, loaded.model, inputs)
