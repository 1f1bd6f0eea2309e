"""JobOptions survive the wire. Every field of every options class that travels (walked with dataclasses.fields)
has a wire form, or is on server.wire.LOCAL_ONLY with its reason and is then refused, never dropped; a non-default
value of each survives to_proto, then from_proto; bad ones are refused."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator

import pytest

from convert import AutoConfig, BenchConfig, ConvertConfig, ConvertError, DistillConfig, OnnxConfig
from convert.job import CalibrateJob, DistillJob, JobOptions
from convert.runtime.quantize import QuantizeConfig
from server.rpc import converter_pb2 as pb
from server.wire import LOCAL_ONLY, calibration_files, from_proto, to_proto

M = "service_models:tiny"
SYNTHETIC = ("synthetic",)


def convert(**fields) -> JobOptions:
    return JobOptions(M, config=ConvertConfig(**fields))


def onnx(**fields) -> JobOptions:
    return JobOptions(M, onnx=OnnxConfig(**fields))


def bench(**fields) -> JobOptions:
    return JobOptions(M, bench=BenchConfig(**fields))


def auto(bench: BenchConfig | None = None, **fields) -> JobOptions:
    return JobOptions(M, config=ConvertConfig(target="auto"), auto=AutoConfig(**fields), bench=bench)


def distill(data: tuple[str, ...] = SYNTHETIC, bench: BenchConfig | None = None, **fields) -> JobOptions:
    return JobOptions(M, bench=bench, distill=DistillJob(data, config=DistillConfig(**fields)))


def job(**fields) -> JobOptions:
    return JobOptions(M, distill=DistillJob(**{"data": SYNTHETIC, **fields}))


def quantize(auto: AutoConfig | None = None, **fields) -> JobOptions:
    """INT8 on synthetic calibration inputs, or (with `distill`) on the distillation's."""
    config = ConvertConfig(target="auto") if auto else ConvertConfig()
    return JobOptions(M, config=config, auto=auto, quantize=QuantizeConfig(**{"calibration": SYNTHETIC, **fields}))


UPLOADED = ("upload-data-1.pt", "upload-data-2.npz")  # as the server stores uploaded data files

# Non-default values of every field of every options class, each in a JobOptions where it is valid. The model, its
# weights and the distillation data files travel as SubmitHeader.source and the upload (test_service.py sends them):
# here they are passed beside the options, as the servicer passes them.
SAMPLES: dict[type, dict[str, list[JobOptions]]] = {
    JobOptions: {
        "model": [JobOptions("torchvision.models:resnet18"), JobOptions("upload.pt2")],
        "weights": [JobOptions(M, weights="upload.safetensors")],
        "input_shapes": [JobOptions(M, input_shapes=((1, 3, 8, 8), (2, 5)))],
        "input_dtype": [JobOptions(M, input_dtype="float64")],
        "config": [convert(rank=2)],
        "onnx": [onnx()],
        "bench": [bench()],
        "auto": [auto()],
        "distill": [distill()],
        "plan": [JobOptions(M, plan="plan.json")],
        "quantize": [
            quantize(),
            JobOptions(M, distill=DistillJob(UPLOADED), quantize=QuantizeConfig()),  # on the uploaded data
        ],
        "accelerator": [JobOptions(M, accelerator="H100")],
        "resources": [JobOptions(M, resources={"edge-cpu": 1}), JobOptions(M, resources=(("a", 0.5), ("b", 2)))],
        "model_args": [JobOptions(M, model_args={"num_classes": 10, "act": "relu", "sizes": (1, 2), "bias": False})],
        "calibrate": [JobOptions(M, calibrate=CalibrateJob(SYNTHETIC))],
        "input_names": [JobOptions(M, input_shapes=((1, 3, 8, 8), (1, 8)), input_names=("pixel_values", "mask"))],
        "model_dtype": [JobOptions(M, model_dtype="float16"), JobOptions(M, model_dtype="bfloat16")],
    },
    ConvertConfig: {
        "target": [convert(target="grouped", groups=4), convert(target="auto")],
        "rank": [convert(rank=3), convert(rank="full")],
        "energy": [convert(energy=0.9)],
        "groups": [convert(target="grouped", groups=4)],
        "pointwise": [convert(target="grouped", groups=2, pointwise=False)],
        "include": [convert(include="layer1")],
        "exclude": [convert(exclude="fc")],
        "min_channels": [convert(min_channels=4)],
        "transposed": [convert(transposed="skip")],
        "include_grouped": [convert(include_grouped=True)],
    },
    OnnxConfig: {
        "opset": [onnx(opset=18)],
        "dynamic_batch": [onnx(dynamic_batch=False)],
        "atol": [onnx(atol=1e-3)],
    },
    BenchConfig: {
        "device": [bench(device="cpu"), bench(device="tensorrt")],
        "threads": [bench(threads=2), auto(bench=BenchConfig(threads=4))],  # the plan times on all cores
        "warmup": [bench(warmup=0)],
        "runs": [bench(runs=7)],
        "duration": [bench(duration=2.5)],
        "batch_sizes": [bench(batch_sizes=(1, 8))],
        "runtime": [bench(runtime="torch"), auto(bench=BenchConfig(runtime="torch"))],
        "compile": [bench(runtime="torch", compile=True)],
        "dtype": [bench(runtime="torch", dtype="bfloat16")],
        "channels_last": [bench(runtime="torch", channels_last=True)],
    },
    AutoConfig: {
        "target_speedup": [auto(target_speedup=3.0)],
        "max_error": [auto(max_error=0.2)],
        "device": [auto(device="cuda"), auto(device="auto", bench=BenchConfig(device="cpu"))],
        "threads": [auto(threads=2), auto(threads=2, bench=BenchConfig(threads=4))],
        "runs": [auto(runs=7)],
        "warmup": [auto(warmup=0)],
        "max_candidates": [auto(max_candidates=4)],
        "cache_dir": [auto(cache_dir="/tmp/latency")],
        # the plan's runtime may differ from the benchmark's, and an AutoOptions without it takes the benchmark's
        "runtime": [auto(runtime="torch"), auto(runtime="torch", bench=BenchConfig(runtime="torch", compile=True))],
        "compile": [auto(runtime="torch", compile=True), auto(runtime="torch", compile=True, bench=BenchConfig())],
        "dtype": [auto(runtime="torch", dtype="float16", channels_last=True)],
        "channels_last": [auto(runtime="torch", channels_last=True, bench=BenchConfig(runtime="torch"))],
        "quantize": [quantize(AutoConfig()), quantize(AutoConfig(quantize=("qdq-u8s8",)))],  # all, or some formats
    },
    QuantizeConfig: {
        "calibration": [
            quantize(),
            quantize(calibration=("upload-calibrate-1.npy",)),  # the upload of role CALIBRATE, for quantize alone
        ],
        "calibration_samples": [quantize(calibration_samples=32)],
        "calibration_method": [quantize(calibration_method="entropy")],
        "formats": [quantize(formats=("qdq-u8s8", "qop-u8s8"))],
        "max_quant_error": [quantize(max_quant_error=0.02)],
    },
    CalibrateJob: {
        "data": [
            JobOptions(M, calibrate=CalibrateJob(("upload-calibrate-1.npy",))),
            JobOptions(M, calibrate=CalibrateJob(SYNTHETIC)),
        ],
        "samples": [
            JobOptions(M, calibrate=CalibrateJob(SYNTHETIC, samples=64)),
            JobOptions(M, distill=DistillJob(UPLOADED), calibrate=CalibrateJob(samples=32)),  # the training inputs
        ],
    },
    DistillJob: {
        "data": [job(data=UPLOADED), job(data=("upload-data-1.npy",), val=("upload-val-1.npy",))],
        "config": [distill(steps=3)],
        "val": [job(val=("upload-val-1.safetensors",)), job(data=UPLOADED, val=("upload-val-1.npy",))],
        "image_mean": [job(image_mean=(0.5, 0.5, 0.5))],
        "image_std": [job(image_std=(0.2, 0.2, 0.2))],
        "resume": [job(resume=True)],
    },
    DistillConfig: {
        "steps": [distill(steps=10)],
        "epochs": [distill(data=UPLOADED, epochs=2.5)],
        "batch_size": [distill(batch_size=4)],
        "lr": [distill(lr=0.01)],
        "weight_decay": [distill(weight_decay=0.01)],
        "warmup": [distill(warmup=0.2), distill(warmup=0.0)],
        "loss": [distill(loss="mse")],
        "temperature": [distill(temperature=2.0)],
        "feature_weight": [distill(feature_weight=0.0)],
        "batchnorm": [distill(batchnorm="freeze")],
        # the bug this file guards: without a benchmark, the device did not travel
        "device": [distill(device="cpu"), distill(device="cuda"), distill(device="cpu", bench=BenchConfig("cuda"))],
        "amp": [distill(amp="off")],
        "grad_clip": [distill(grad_clip=None), distill(grad_clip=2.0)],
        "eval_every": [distill(eval_every=5)],
        "seed": [distill(seed=3)],
        "workers": [distill(workers=2)],
        "processes": [distill(processes=2)],
    },
}


def nested(cls: type) -> Iterator[type]:
    """The options classes among the types of `cls`'s fields (`X | None` included)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        for kind in (hints[field.name], *typing.get_args(hints[field.name])):
            if dataclasses.is_dataclass(kind):
                yield kind


def walk(cls: type = JobOptions) -> list[type]:
    """`cls` and every options class nested in it, recursively."""
    found = [cls]
    for inner in nested(cls):
        found += [c for c in walk(inner) if c not in found]
    return found


def parts(options: object) -> dict[type, object]:
    """Each options object inside `options` (itself included), by class."""
    found = {type(options): options}
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if dataclasses.is_dataclass(value):
            found |= parts(value)
    return found


FIELDS = [(cls, field) for cls in walk() for field in dataclasses.fields(cls)]
TRAVELLING = [
    (cls, field.name, sample)
    for cls, field in FIELDS
    if (cls, field.name) not in LOCAL_ONLY
    for sample in SAMPLES.get(cls, {}).get(field.name, [])
]
REFUSED = [(cls, name, sample) for (cls, name) in LOCAL_ONLY for sample in SAMPLES[cls][name]]


def label(case: tuple[type, str, JobOptions]) -> str:
    return f"{case[0].__name__}.{case[1]}"


def round_trip(options: JobOptions) -> JobOptions:
    """to_proto, serialised and parsed, then from_proto with the uploaded files' names, as the servicer does."""
    message = pb.JobOptions.FromString(to_proto(options).SerializeToString())
    job = options.distill
    data = () if job is None or job.data == SYNTHETIC else job.data
    val = () if job is None else job.val or ()
    return from_proto(message, options.model, options.weights, data, val, calibration_files(options))


def test_the_walk_finds_every_options_class() -> None:
    assert set(walk()) == {
        JobOptions,
        ConvertConfig,
        OnnxConfig,
        BenchConfig,
        AutoConfig,
        DistillJob,
        DistillConfig,
        QuantizeConfig,
        CalibrateJob,
    }


@pytest.mark.parametrize(("cls", "field"), FIELDS, ids=[f"{c.__name__}.{f.name}" for c, f in FIELDS])
def test_every_field_has_a_wire_form_or_is_local_only(cls: type, field: dataclasses.Field) -> None:
    samples = SAMPLES.get(cls, {}).get(field.name)
    assert samples, (
        f"{cls.__name__}.{field.name} has no sample here: give it a proto field (proto/converter.proto), carry it "
        "both ways in server/wire/options.py and add a sample value to SAMPLES; or put it on server.wire.LOCAL_ONLY "
        "with the reason it cannot travel (and add a sample, which to_proto must refuse)"
    )
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return  # a required field: any value will do
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default
    for sample in samples:
        value = getattr(parts(sample)[cls], field.name)
        assert value != default, f"a sample of {cls.__name__}.{field.name} keeps the default {default!r}"


@pytest.mark.parametrize("case", TRAVELLING, ids=[label(case) for case in TRAVELLING])
def test_a_non_default_value_survives_the_wire(case: tuple[type, str, JobOptions]) -> None:
    cls, name, options = case
    back = round_trip(options)
    assert getattr(parts(back)[cls], name) == getattr(parts(options)[cls], name)
    assert back == options


def test_defaults_survive_the_wire() -> None:
    assert round_trip(JobOptions(M)) == JobOptions(M)
    assert to_proto(JobOptions(M)).distill.data == "" and not to_proto(JobOptions(M)).HasField("distill")
    assert to_proto(distill()).distill.data == "synthetic" and to_proto(job(data=UPLOADED)).distill.data == ""


@pytest.mark.parametrize("case", REFUSED, ids=[label(case) for case in REFUSED])
def test_local_only_fields_are_refused_not_dropped(case: tuple[type, str, JobOptions]) -> None:
    _, name, options = case
    expected = f"^`{name}` \\(.+\\) applies to local runs only: drop it to run on a server$"
    with pytest.raises(ConvertError, match=expected):
        to_proto(options)


def test_local_only_fields_are_named_together() -> None:
    options = JobOptions(M, distill=DistillJob(SYNTHETIC, config=DistillConfig(workers=2), resume=True))
    with pytest.raises(ConvertError, match="^`resume` .*, `workers` .* apply to local runs only: drop them") as error:
        to_proto(options)
    assert str(error.value).count("`") == 4


def test_older_clients_get_what_they_got() -> None:
    """Messages without the fields added since (DistillOptions.device, AutoOptions.device, .threads and the
    runtime's fields) mean what they meant: the benchmark's device, threads and runtime."""
    for device, expected in (("cpu", "cpu"), ("cuda", "cuda"), ("tensorrt", "auto")):
        message = pb.JobOptions(benchmark=pb.BenchOptions(device=device), distill=pb.DistillOptions(data="synthetic"))
        assert from_proto(message, M).distill.config.device == expected
    message = pb.JobOptions(distill=pb.DistillOptions(data="synthetic"))
    assert from_proto(message, M).distill.config.device == "auto"
    message = pb.JobOptions(target="auto", benchmark=pb.BenchOptions(device="cuda", threads=3))
    options = from_proto(message, M)
    assert (options.auto.device, options.auto.threads) == ("cuda", 3)
    message = pb.JobOptions(target="auto", benchmark=pb.BenchOptions(runtime="torch", dtype="bfloat16", compile=True))
    options = from_proto(message, M)  # AutoOptions without the runtime's fields: the plan is timed as benchmarked
    assert (options.auto.runtime, options.auto.dtype, options.auto.compile) == ("torch", "bfloat16", True)
    message = pb.JobOptions(target="auto", auto=pb.AutoOptions(target_speedup=3))
    assert (from_proto(message, M).auto.device, from_proto(message, M).auto.threads) == ("auto", None)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (pb.JobOptions(rank=2, full_rank=True), "either `rank` or `full_rank`"),
        (pb.JobOptions(groups=2), "`groups` applies to `target`=grouped only"),
        (pb.JobOptions(transposed="sideways"), "unknown transposed form 'sideways'"),
        (pb.JobOptions(input_shapes=[pb.Shape(dims=[1, 0])]), "input shape"),
        (pb.JobOptions(benchmark=pb.BenchOptions(runs=3, duration_seconds=1)), "either `runs` or `duration_seconds`"),
        (pb.JobOptions(benchmark=pb.BenchOptions(device="tpu")), "unknown device"),
        (pb.JobOptions(benchmark=pb.BenchOptions(runtime="tvm")), "unknown runtime 'tvm'"),
        (pb.JobOptions(benchmark=pb.BenchOptions(compile=True)), "`compile` goes with `runtime`=torch"),
        (pb.JobOptions(benchmark=pb.BenchOptions(runtime="torch", dtype="int8")), "`dtype`=int8 is not valid"),
        (pb.JobOptions(onnx=pb.OnnxOptions(atol=0)), "atol"),
        (pb.JobOptions(auto=pb.AutoOptions(target_speedup=2)), "`auto` options go with `target`=auto"),
        (pb.JobOptions(target="auto", auto=pb.AutoOptions(target_speedup=0.5)), "target speedup"),
        (pb.JobOptions(target="auto", auto=pb.AutoOptions(max_candidates=1)), "max_candidates"),
        (pb.JobOptions(distill=pb.DistillOptions(data="images/", steps=10)), "not available on the service"),
        (pb.JobOptions(distill=pb.DistillOptions(steps=10)), "distillation needs training inputs"),
        (pb.JobOptions(distill=pb.DistillOptions(data="synthetic", device="tpu")), "device 'tpu' is not valid"),
        (pb.JobOptions(distill=pb.DistillOptions(data="synthetic", warmup=1.0)), "warmup 1.0 is not valid"),
        (pb.JobOptions(quantize=pb.QuantizeOptions(calibration="images/")), "not available on the service"),
        (pb.JobOptions(quantize=pb.QuantizeOptions(calibration="synthetic", formats=["fp4"])), "`formats` fp4"),
    ],
)
def test_refused(message: pb.JobOptions, expected: str) -> None:
    with pytest.raises(ConvertError, match=expected):
        from_proto(message, "m")


@pytest.mark.parametrize(
    ("message", "uploaded", "expected"),
    [
        (pb.JobOptions(), {"data": ["upload-data-1.npy"]}, "data files go with distillation"),
        (pb.JobOptions(), {"val": ["upload-val-1.npy"]}, "data files go with distillation"),
        (
            pb.JobOptions(distill=pb.DistillOptions(data="synthetic")),
            {"data": ["upload-data-1.npy"]},
            "either synthetic or uploaded",
        ),
        (pb.JobOptions(), {"calibration": ["upload-calibrate-1.npy"]}, "go with calibrate, or quantize not synthetic"),
        (
            pb.JobOptions(quantize=pb.QuantizeOptions(calibration="synthetic")),
            {"calibration": ["upload-calibrate-1.npy"]},
            "go with calibrate, or quantize not synthetic",
        ),
        (
            pb.JobOptions(calibrate=pb.CalibrateOptions(data="synthetic")),
            {"calibration": ["upload-calibrate-1.npy"]},
            "either synthetic or uploaded files",
        ),
        (pb.JobOptions(calibrate=pb.CalibrateOptions()), {}, "`calibrate` needs its data"),
    ],
)
def test_data_files_refused(message: pb.JobOptions, uploaded: dict, expected: str) -> None:
    with pytest.raises(ConvertError, match=expected):
        from_proto(message, "m", **uploaded)


def test_quantize_and_calibrate_read_one_upload() -> None:
    shared = JobOptions(M, calibrate=CalibrateJob(("in.npy",)), quantize=QuantizeConfig(calibration=("in.npy",)))
    assert calibration_files(shared) == ("in.npy",)  # what the CLI's --calibrate DATA --quantize int8 makes
    read = JobOptions(M, calibrate=CalibrateJob(("upload-calibrate-1.npy",)), quantize=QuantizeConfig())
    assert round_trip(read) == read  # on the server too, `quantize` reads what `calibrate` reads
    assert calibration_files(JobOptions(M, quantize=QuantizeConfig(calibration=("a.npy", "b.npy")))) == (
        "a.npy",
        "b.npy",
    )
    assert calibration_files(JobOptions(M, quantize=QuantizeConfig(calibration=SYNTHETIC))) == ()
    for calibrate in (CalibrateJob(("other.npy",)), CalibrateJob(SYNTHETIC)):
        with pytest.raises(ConvertError, match="^on a server, `quantize` calibrates on what `calibrate` reads"):
            to_proto(JobOptions(M, calibrate=calibrate, quantize=QuantizeConfig(calibration=("in.npy",))))
