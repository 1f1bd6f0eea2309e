"""The one table of library option names -> command-line flags, and library messages rewritten in flag terms."""

from __future__ import annotations

import dataclasses
import re

from convert.auto import AutoConfig
from convert.distill import DistillConfig
from convert.job import CalibrateJob, DistillJob, JobOptions
from convert.runtime import BenchConfig, OnnxConfig
from convert.runtime.quantize import QuantizeConfig
from convert.surgery.config import ConvertConfig

__all__ = [
    "AUTO_OPTIONS",
    "DISTILL_JOB_OPTIONS",
    "DISTILL_OPTIONS",
    "FLAGS",
    "PARAMETERS",
    "QUANTIZE_OPTIONS",
    "Flag",
    "flag",
    "to_cli",
]


@dataclasses.dataclass(frozen=True)
class Flag:
    """How the command line spells one library option."""

    text: str  # what the user types: "--rank", "--to", "MODEL"
    # For a flag that takes no value: the option's value when the flag is given (`pointwise` is False with
    # --no-pointwise); None for a flag that takes the value after it.
    switch: bool | None = None

    def spell(self, value: str | None = None) -> str:
        """The flag, for `name` alone or for `name`=value in a message."""
        if value is None:
            return self.text
        if self.switch is None:
            return f"{self.text} {value}"
        return self.text if value == str(self.switch) else f"no {self.text}"


# Per options class, the fields that have a flag of their own. --device and --threads set the benchmark's,
# the --to auto planner's and the distillation's device, and --runtime, --compile, --bench-dtype, --channels-last the
# benchmark's and the planner's runtime: they are listed once, under BenchConfig.
FLAGS: dict[type, dict[str, Flag]] = {
    JobOptions: {
        "model": Flag("MODEL"),
        "weights": Flag("--weights"),
        "plan": Flag("--plan"),
        "model_args": Flag("--model-arg"),
        "input_shapes": Flag("--input-shape"),
        "input_dtype": Flag("--input-dtype"),
        "input_names": Flag("--input-shape"),  # its NAME=N,C,... form
        "model_dtype": Flag("--dtype"),
        "onnx": Flag("--onnx"),
        "bench": Flag("--benchmark"),
        "auto": Flag("--to auto"),
        "distill": Flag("--distill"),
        "quantize": Flag("--quantize int8"),
        "accelerator": Flag("--accelerator"),
        "resources": Flag("--resource"),
        "calibrate": Flag("--calibrate"),
    },
    ConvertConfig: {
        "target": Flag("--to"),
        "rank": Flag("--rank"),
        "energy": Flag("--energy"),
        "groups": Flag("--groups"),
        "pointwise": Flag("--no-pointwise", switch=False),
        "include": Flag("--include"),
        "exclude": Flag("--exclude"),
        "min_channels": Flag("--min-channels"),
        "transposed": Flag("--transposed"),
        "include_grouped": Flag("--include-grouped", switch=True),
    },
    OnnxConfig: {
        "opset": Flag("--opset"),
        "dynamic_batch": Flag("--static-shapes", switch=False),
        "atol": Flag("--atol"),
    },
    BenchConfig: {
        "device": Flag("--device"),
        "threads": Flag("--threads"),
        "warmup": Flag("--warmup"),
        "runs": Flag("--runs"),
        "duration": Flag("--duration"),
        "batch_sizes": Flag("--batch-sizes"),
        "runtime": Flag("--runtime"),
        "compile": Flag("--compile", switch=True),
        "dtype": Flag("--bench-dtype"),
        "channels_last": Flag("--channels-last", switch=True),
    },
    AutoConfig: {
        "target_speedup": Flag("--target-speedup"),
        "max_error": Flag("--max-error"),
        "cache_dir": Flag("--cache-dir"),
    },
    DistillJob: {
        "data": Flag("--distill"),
        "val": Flag("--val"),
        "image_mean": Flag("--image-mean"),
        "image_std": Flag("--image-std"),
        "resume": Flag("--resume", switch=True),
    },
    CalibrateJob: {  # `data` is --calibrate itself
        "samples": Flag("--calibration-samples"),
    },
    DistillConfig: {
        "steps": Flag("--steps"),
        "epochs": Flag("--epochs"),
        "batch_size": Flag("--batch-size"),
        "lr": Flag("--lr"),
        "loss": Flag("--loss"),
        "temperature": Flag("--temperature"),
        "feature_weight": Flag("--feature-weight"),
        "batchnorm": Flag("--batchnorm"),
        "amp": Flag("--amp"),
        "seed": Flag("--seed"),
        "workers": Flag("--workers"),
        "processes": Flag("--processes"),
    },
    QuantizeConfig: {
        "calibration": Flag("--calibrate"),
        "calibration_samples": Flag("--calibration-samples"),
        "calibration_method": Flag("--calibration-method"),
        "formats": Flag("--quant-formats"),
        "max_quant_error": Flag("--max-quant-error"),
    },
}

# Arguments of library functions (not options fields) that the CLI fills from a flag.
PARAMETERS: dict[str, Flag] = {
    "example_inputs": Flag("--input-shape"),  # convert_model(model, example_inputs, ...)
    "outdir": Flag("--output"),  # run_job(options, outdir), save_result(result, outdir)
    "overwrite": Flag("--overwrite", switch=True),  # run_job(..., overwrite=True), save_result(..., overwrite=True)
}


def _own(options: type) -> tuple[str, ...]:
    """The fields of `options` set by flags of their own, in the dataclass's order."""
    return tuple(f.name for f in dataclasses.fields(options) if f.name in FLAGS[options])


# The DistillConfig fields a user sets, each with a flag of its own and the same name as that flag's dest
# (the service's wire form carries the same list, less the local-only `workers`).
DISTILL_OPTIONS = _own(DistillConfig)
DISTILL_JOB_OPTIONS = tuple(name for name in _own(DistillJob) if name != "data")  # `data` is --distill itself
AUTO_OPTIONS = _own(AutoConfig)  # go with --to auto
QUANTIZE_OPTIONS = _own(QuantizeConfig)  # go with --quantize int8

_BY_NAME: dict[str, Flag] = {name: f for table in FLAGS.values() for name, f in table.items()} | PARAMETERS
# `name`, optionally followed by =value (up to the next space); the punctuation that ends a clause is not the value's
_NAMED = re.compile(r"`(?P<name>[A-Za-z_]\w*)`(?:=(?P<value>\S+))?")
_CLAUSE_END = ".,;:)]"


def flag(name: str) -> str:
    """The flag of the library option `name` (e.g. "target" -> "--to").

    Raises:
        KeyError: `name` is not in the table.
    """
    return _BY_NAME[name].text


def to_cli(message: str) -> str:
    """`message` (a library error or warning) with each backticked option name replaced by its flag.

    Library messages name options as their dataclass fields, so that Python and gRPC users read their own terms.

    "`target`=grouped needs `groups`" -> "--to grouped needs --groups". Names that are not in the table keep
    their backticks; messages that already speak flags are left as they are.
    """

    def replace(match: re.Match[str]) -> str:
        name, value = match["name"], match["value"]
        if name not in _BY_NAME:
            return match[0]
        tail = ""
        if value is not None:
            core = value.rstrip(_CLAUSE_END)
            value, tail = (core, value[len(core) :]) if core else (None, f"={value}")
        return _BY_NAME[name].spell(value) + tail

    return _NAMED.sub(replace, message)
