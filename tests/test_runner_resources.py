"""What a job takes of a Ray cluster (server.runners.resources), the job options that ask for it, and the local
runner's refusal of them: no cluster here, the nodes as `ray.nodes()` describes them (test_ray runs a real one)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from convert.auto import AutoConfig
from convert.distill.config import DistillConfig
from convert.errors import ConvertError
from convert.job import DistillJob, JobOptions
from convert.runtime.bench import BenchConfig
from convert.surgery.config import ConvertConfig
from server.config import ServerConfig
from server.runners import LocalRunner, Unsatisfiable, make_runner
from server.runners.resources import describe_nodes, request, shortfall

BASE = JobOptions("service_models:tiny", input_shapes=((1, 3, 16, 16),))
CPU_NODE = {"CPU": 2.0, "memory": 1e9, "node:127.0.0.1": 1.0}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A10G": 1.0, "edge-cpu": 2.0}


def distilling(**config: object) -> JobOptions:
    return JobOptions(
        BASE.model, input_shapes=BASE.input_shapes, distill=DistillJob(("synthetic",), DistillConfig(**config))
    )


def test_a_plain_job_takes_the_default_cpus_and_fits_a_cpu_node() -> None:
    job = request(BASE, default_cpus=1)
    assert job.task_options() == {"num_cpus": 1, "num_gpus": 0, "resources": {}}
    assert job.placement() == {"CPU": 1.0}
    assert shortfall(job, [CPU_NODE]) is None


def test_threads_gpu_devices_accelerator_and_resources_become_the_task_options() -> None:
    options = JobOptions(
        BASE.model,
        input_shapes=BASE.input_shapes,
        config=ConvertConfig(target="auto"),
        bench=BenchConfig(device="cuda", threads=4),
        auto=AutoConfig(threads=2),  # the larger of the thread counts
        accelerator="A10G",
        resources={"edge-cpu": 1},
    )
    job = request(options, default_cpus=1)
    assert job.task_options() == {
        "num_cpus": 4,
        "num_gpus": 1,
        "resources": {"edge-cpu": 1.0},
        "accelerator_type": "A10G",
    }
    assert job.placement() == {"CPU": 4.0, "GPU": 1.0, "edge-cpu": 1.0, "accelerator_type:A10G": 1.0}
    assert shortfall(job, [CPU_NODE, GPU_NODE]) is None
    assert shortfall(job, [CPU_NODE]) == ("no node has what the job's task takes (CPU 4, GPU 1 (A10G), edge-cpu 1)")


def test_ray_train_workers_count_over_the_whole_cluster() -> None:
    job = request(distilling(processes=3, device="cpu"), default_cpus=1)
    assert (job.cpus, job.gpus, job.trainers, job.trainer_gpus) == (1, 0, 3, False)
    assert shortfall(job, [CPU_NODE, CPU_NODE]) is None  # 4 CPUs over 2 nodes: 1 for the task, 3 for the trainers
    why = shortfall(job, [CPU_NODE])
    assert why is not None and "the nodes together have 2 CPUs and 0 GPUs, and the job takes 4 and 0" in why
    on_gpu = request(distilling(processes=2, device="cuda"), default_cpus=1)
    assert (on_gpu.gpus, on_gpu.trainer_gpus) == (
        0,
        True,
    )  # the task itself trains nothing: its trainers take a GPU each
    assert "takes 3 and 2" in shortfall(on_gpu, [GPU_NODE])


def test_no_node_alive_and_the_cluster_described() -> None:
    assert shortfall(request(BASE, 1), []) == "the Ray cluster has no node alive"
    assert describe_nodes([CPU_NODE, GPU_NODE]) == "2 nodes: CPU 2; CPU 8, GPU 1 (A10G), edge-cpu 2"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resources": {"CPU": 2}}, r"`resources` name 'CPU' is not valid: .*not CPU, GPU or memory"),
        ({"resources": {"bad name": 1}}, r"`resources` name 'bad name' is not valid"),
        ({"resources": {"edge": 0}}, r"`resources` edge=0 is not valid: use a positive amount, e.g. edge=1"),
        ({"resources": (("edge", 1), ("edge", 2))}, r"`resources` names a resource twice"),
        ({"accelerator": "H100 SXM"}, r"`accelerator` 'H100 SXM' is not a Ray accelerator type"),
    ],
)
def test_job_options_refuse_resources_ray_cannot_take(fields: dict, message: str) -> None:
    with pytest.raises(ConvertError, match=message):
        JobOptions(BASE.model, input_shapes=BASE.input_shapes, **fields)


def test_resources_are_kept_sorted_and_survive_a_dict_round_trip() -> None:
    options = JobOptions(BASE.model, input_shapes=BASE.input_shapes, resources={"b": 2, "a": 0.5}, accelerator="H100")
    assert options.resources == (("a", 0.5), ("b", 2.0))
    assert JobOptions.from_dict(options.to_dict()) == options


def test_the_local_runner_refuses_what_only_a_ray_node_can_give(tmp_path: Path) -> None:
    runner = make_runner(ServerConfig(tmp_path))  # no --runner: the local one, as before
    assert isinstance(runner, LocalRunner)
    runner.admit(BASE)
    with pytest.raises(
        Unsatisfiable, match=r"^`accelerator` and `processes` choose nodes of a Ray cluster, .*--runner ray"
    ):
        runner.admit(dataclasses.replace(distilling(processes=2), accelerator="H100"))
    with pytest.raises(ConvertError, match=r"--ray-address goes with --runner ray"):
        ServerConfig(tmp_path, ray_address="127.0.0.1:6379")
