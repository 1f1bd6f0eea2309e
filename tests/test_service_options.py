"""JobOptions survive the wire: to_proto, then from_proto, gives them back; bad ones are refused."""

from __future__ import annotations

import pytest

from convert import AutoConfig, BenchConfig, ConvertConfig, ConvertError, OnnxConfig
from convert.distill.config import DistillConfig
from convert.job import DistillJob, JobOptions
from server.rpc import converter_pb2 as pb
from server.wire import from_proto, to_proto

CASES = [
    JobOptions("m"),
    JobOptions("m", input_shapes=((1, 3, 8, 8), (2, 5)), input_dtype="float64", config=ConvertConfig(rank="full")),
    JobOptions("m", config=ConvertConfig(rank=3, include="layer1", exclude="fc", min_channels=4)),
    JobOptions("m", config=ConvertConfig(energy=0.9)),
    JobOptions("m", config=ConvertConfig(target="grouped", groups=4, pointwise=False)),
    JobOptions("m", onnx=OnnxConfig(opset=18, dynamic_batch=False, atol=1e-3)),
    JobOptions("m", bench=BenchConfig(device="cpu", threads=2, warmup=0, runs=7, batch_sizes=(1, 8))),
    JobOptions("m", bench=BenchConfig(device="cuda", duration=2.5)),
    JobOptions("m", config=ConvertConfig(target="auto")),
    JobOptions("m", distill=DistillJob(data=("synthetic",), config=DistillConfig(steps=10, lr=0.01, seed=3))),
    JobOptions(
        "m",
        distill=DistillJob(
            data=("synthetic",), config=DistillConfig(loss="mse", temperature=2.0, batchnorm="freeze", amp="off")
        ),
    ),
    JobOptions(
        "m",
        config=ConvertConfig(target="auto"),
        auto=AutoConfig(target_speedup=3.0, max_error=0.2, device="cpu", threads=2),
        bench=BenchConfig(device="cpu", threads=2, batch_sizes=(1, 4)),
    ),
    JobOptions(
        "m", bench=BenchConfig(device="cpu", runtime="torch", compile=True, dtype="bfloat16", channels_last=True)
    ),
    JobOptions(
        "m",
        config=ConvertConfig(target="auto"),
        auto=AutoConfig(device="cuda", runtime="torch", dtype="float16", channels_last=True),
        bench=BenchConfig(device="cuda", runtime="torch", dtype="float16", channels_last=True),
    ),
]


# Distillation on uploaded files: the files travel as the upload's data files, stored on the server as these.
UPLOADED = [
    JobOptions("m", distill=DistillJob(data=("upload-data-1.npy",), config=DistillConfig(epochs=2.5, batch_size=4))),
    JobOptions("m", distill=DistillJob(data=("upload-data-1.pt", "upload-data-2.npz"), val=("upload-val-1.npy",))),
    JobOptions("m", distill=DistillJob(data=("synthetic",), val=("upload-val-1.safetensors",))),
]


@pytest.mark.parametrize("options", CASES + UPLOADED, ids=range(len(CASES + UPLOADED)))
def test_round_trip(options: JobOptions) -> None:
    wire = pb.JobOptions.FromString(to_proto(options).SerializeToString())
    distill = options.distill
    uploaded = {} if distill is None else {"data": distill.data, "val": distill.val or ()}
    if uploaded.get("data") == ("synthetic",):
        uploaded["data"] = ()
    assert wire.distill.data == ("synthetic" if distill and distill.data == ("synthetic",) else "")
    assert from_proto(wire, "m", **uploaded) == options


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (pb.JobOptions(rank=2, full_rank=True), "either rank or full_rank"),
        (pb.JobOptions(groups=2), "--groups applies to --to grouped only"),
        (pb.JobOptions(input_shapes=[pb.Shape(dims=[1, 0])]), "input shape"),
        (pb.JobOptions(benchmark=pb.BenchOptions(runs=3, duration_seconds=1)), "either runs or duration"),
        (pb.JobOptions(benchmark=pb.BenchOptions(device="tpu")), "unknown device"),
        (pb.JobOptions(benchmark=pb.BenchOptions(runtime="tvm")), "unknown runtime 'tvm'"),
        (pb.JobOptions(benchmark=pb.BenchOptions(compile=True)), "`compile` goes with `runtime`=torch"),
        (pb.JobOptions(benchmark=pb.BenchOptions(runtime="torch", dtype="int8")), "`dtype`=int8 is not valid"),
        (pb.JobOptions(onnx=pb.OnnxOptions(atol=0)), "atol"),
        (pb.JobOptions(auto=pb.AutoOptions(target_speedup=2)), "auto options go with target 'auto'"),
        (pb.JobOptions(target="auto", auto=pb.AutoOptions(target_speedup=0.5)), "target speedup"),
        (pb.JobOptions(distill=pb.DistillOptions(data="images/", steps=10)), "not available on the service"),
        (pb.JobOptions(distill=pb.DistillOptions(steps=10)), "distillation needs training inputs"),
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
    ],
)
def test_data_files_refused(message: pb.JobOptions, uploaded: dict, expected: str) -> None:
    with pytest.raises(ConvertError, match=expected):
        from_proto(message, "m", **uploaded)


@pytest.mark.parametrize(
    "distill",
    [
        DistillJob(data=("synthetic",), resume=True),
        DistillJob(data=("synthetic",), config=DistillConfig(workers=2)),
        DistillJob(data=("synthetic",), image_mean=(0.5, 0.5, 0.5)),
    ],
)
def test_local_only_distill_options_are_refused_not_dropped(distill: DistillJob) -> None:
    with pytest.raises(ConvertError, match="apply to local runs only"):
        to_proto(JobOptions("m", distill=distill))
