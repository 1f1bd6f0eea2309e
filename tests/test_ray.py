"""The service on a Ray cluster (`convert serve --runner ray`), for real: a cluster of real nodes (raylets) on this
machine, on loopback, started once for the session, and the real server connected to it as a driver.

Against a local run: the round trip gives the same report (but for timings and where it ran) and the same model;
a distillation over 2 Ray Train workers (gloo) gives the weights of one process. Then scheduling (8 jobs over both
nodes, a job pinned to a custom resource, one that no node can run refused at Submit), cancel, a node lost mid-job,
and a server restart while the cluster runs a job.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import ray
import service_models
import torch
from ray.cluster_utils import Cluster
from safetensors.torch import save_file
from servers import FACTORIES, ROOT, TESTS, running_server

from convert import ConvertConfig
from convert.distill.config import DistillConfig
from convert.job import DistillJob, JobOptions, run_job
from convert.runtime.bench import BenchConfig
from server.client import ConvertClient, ServiceError
from server.rpc import converter_pb2 as pb
from server.runners.node import JOBS_DIR_ENV

# A Ray cluster, a server and its jobs' workers; in one pytest-xdist worker (`--dist loadgroup`), so that the session
# starts one cluster.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

SHAPE = ((1, 3, 16, 16),)
TINY = JobOptions("service_models:tiny", input_shapes=SHAPE, config=ConvertConfig(rank="full"))
SLOW = JobOptions("service_models:slow", input_shapes=SHAPE)
FINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
# Loopback only (conftest sets it before Ray is imported; the nodes inherit it), and one thread per tiny job.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}


@dataclasses.dataclass
class RayCluster:
    cluster: Cluster
    head: str  # node ids
    edge: str  # the node with the custom resource "edge-cpu"
    jobs_dir: Path  # where the nodes keep their jobs' folders


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """Two nodes of 2 CPUs each (logical: they share this machine's cores); the second has `edge-cpu`. Their
    processes inherit this environment: the tests' factories importable, loopback only, the jobs' folders here."""
    jobs_dir = tmp_path_factory.mktemp("node-jobs")
    path = os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    saved = dict(os.environ)
    os.environ.update(RAY_ENV, PYTHONPATH=path, **{JOBS_DIR_ENV: str(jobs_dir)})
    # A node lost is noticed within a few seconds (its raylet's health checks), not Ray's default 30 s and more.
    checks = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "_system_config": checks})
    edge = cluster.add_node(num_cpus=2, resources={"edge-cpu": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield RayCluster(cluster, cluster.head_node.node_id, edge.node_id, jobs_dir)
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def server(cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("ray-server") / "data"
    options = ["--runner", "ray", "--ray-address", cluster.cluster.address, "--workers", "8", *FACTORIES]
    with running_server(data, *options) as server:
        yield server


@pytest.fixture
def client(server) -> Iterator[ConvertClient]:
    with ConvertClient(server.address) as c:
        yield c


def wait_for(client: ConvertClient, job_id: str, *states: int, timeout: float = 120) -> pb.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is {pb.JobState.Name(job.state)}, not {states}: {job.message}")


def placement(job: pb.Job) -> dict:
    return json.loads(job.report_json)["placement"]


def worker_pid(cluster: RayCluster, timeout: float = 120) -> int:
    """The pid of the one worker running `service_models.slow` on a node (it writes `pid` in its job's folder)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in cluster.jobs_dir.glob("*/pid"):
            if path.read_text():
                pid = int(path.read_text())
                path.unlink()
                return pid
        time.sleep(0.1)
    raise AssertionError("no slow job wrote its pid on a node")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def without_timings_and_placement(report: dict) -> dict:
    return {key: value for key, value in report.items() if key not in ("seconds", "placement")}


# --- the cluster ----------------------------------------------------------------------------------------------------


def test_every_node_is_on_loopback(cluster: RayCluster) -> None:
    nodes = [node for node in ray.nodes() if node["Alive"]]
    assert {node["NodeID"] for node in nodes} == {cluster.head, cluster.edge}
    assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}


# --- against a local run --------------------------------------------------------------------------------------------


def test_round_trip_matches_a_local_run(client: ConvertClient, cluster: RayCluster, tmp_path: Path) -> None:
    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    save_file(service_models.tiny().state_dict(), weights)
    options = JobOptions("service_models:tiny", str(weights), SHAPE)
    local = run_job(options, tmp_path / "local")
    remote = client.run(options, tmp_path / "remote")
    assert without_timings_and_placement(remote.to_dict()) == without_timings_and_placement(local.to_dict())
    assert local.placement is None
    assert remote.placement.runner == "ray" and remote.placement.node in (cluster.head, cluster.edge)
    assert remote.placement.resources == {"CPU": 1.0}
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == files
    x = torch.randn(2, 3, 16, 16)
    models = [torch.load(tmp_path / f"{run}/model.pt", weights_only=False) for run in ("local", "remote")]
    torch.testing.assert_close(models[1](x), models[0](x), rtol=0, atol=0)
    assert not list(cluster.jobs_dir.iterdir())  # the node removed the job's folder


def test_distill_on_two_ray_train_workers_matches_one_process(client: ConvertClient, tmp_path: Path) -> None:
    """DDP over 2 Ray Train workers (gloo, on the cluster's nodes), each taking half of every batch: the weights of
    one process (BatchNorm frozen: its batch statistics are per process)."""
    config = DistillConfig(steps=4, batch_size=8, batchnorm="freeze", device="cpu")
    torch.manual_seed(1)
    weights = tmp_path / "tiny.safetensors"
    save_file(service_models.tiny().state_dict(), weights)
    one = JobOptions("service_models:tiny", str(weights), SHAPE, distill=DistillJob(("synthetic",), config))
    two = dataclasses.replace(one, distill=DistillJob(("synthetic",), dataclasses.replace(config, processes=2)))
    local = run_job(one, tmp_path / "one")
    remote = client.run(two, tmp_path / "two")
    assert (local.distill.world_size, remote.distill.world_size) == (1, 2)
    for name in ("loss", "output_rel_error"):
        assert getattr(remote.distill.after, name) == pytest.approx(getattr(local.distill.after, name), rel=1e-3)
    assert remote.distill.after.output_rel_error < remote.distill.before.output_rel_error  # it did train
    expected = torch.load(tmp_path / "one/model.pt", weights_only=False).state_dict()
    got = torch.load(tmp_path / "two/model.pt", weights_only=False).state_dict()
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


# --- scheduling -----------------------------------------------------------------------------------------------------


def test_eight_jobs_spread_over_both_nodes_and_those_pinned_to_a_resource_run_on_its_node(
    client: ConvertClient, cluster: RayCluster
) -> None:
    pinned = dataclasses.replace(TINY, resources={"edge-cpu": 1})
    ids = [client.submit(pinned if index < 2 else TINY) for index in range(8)]
    jobs = [wait_for(client, job_id, *FINAL, timeout=300) for job_id in ids]
    assert [job.state for job in jobs] == [pb.SUCCEEDED] * 8, [job.message for job in jobs]
    placements = [placement(job) for job in jobs]
    assert [p["node"] for p in placements[:2]] == [cluster.edge] * 2
    assert {p["node"] for p in placements[2:]} == {cluster.head, cluster.edge}  # SPREAD
    assert [p["resources"] for p in placements[:3]] == [{"CPU": 1.0, "edge-cpu": 1.0}] * 2 + [{"CPU": 1.0}]


def test_a_job_that_no_node_can_run_is_refused_at_submit(client: ConvertClient) -> None:
    refused = [
        (dataclasses.replace(TINY, resources={"tpu-pod": 1}), "tpu-pod 1"),
        (dataclasses.replace(TINY, accelerator="H100"), "GPU 1 (H100)"),
        (dataclasses.replace(TINY, bench=BenchConfig(device="cuda")), "GPU 1"),
        (dataclasses.replace(TINY, bench=BenchConfig(threads=3)), "CPU 3"),
        (dataclasses.replace(TINY, distill=DistillJob(("synthetic",), DistillConfig(processes=4))), "4 Ray Train"),
    ]
    before = len(client.list())
    for options, asked in refused:
        with pytest.raises(ServiceError) as error:
            client.submit(options)
        assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
        message = str(error.value)
        assert "no node of the Ray cluster can ever run this job" in message and asked in message, message
        assert "the cluster has 2 nodes: CPU 2; CPU 2, edge-cpu 1" in message, message
    assert len(client.list()) == before  # nothing was queued


# --- cancel, node loss, restart -------------------------------------------------------------------------------------


def test_cancel_kills_the_task_and_its_worker(client: ConvertClient, cluster: RayCluster) -> None:
    job_id = client.submit(SLOW)
    pid = worker_pid(cluster)
    job = client.cancel(job_id)
    assert job.state == pb.CANCELLED and job.message == "cancelled by a client while it ran"
    deadline = time.monotonic() + 30
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(pid)


def test_a_node_lost_mid_job_fails_that_job_and_no_other(client: ConvertClient, cluster: RayCluster) -> None:
    doomed = cluster.cluster.add_node(num_cpus=1, resources={"doomed": 1})
    cluster.cluster.wait_for_nodes()
    try:
        lost = client.submit(dataclasses.replace(SLOW, resources={"doomed": 1}))
        pid = worker_pid(cluster)
        other = client.submit(TINY)
        cluster.cluster.remove_node(doomed)
        job = wait_for(client, lost, *FINAL)
        assert (job.state, job.failure) == (pb.FAILED, pb.WORKER), job.message
        assert f"the Ray node {doomed.node_id[:12]}" in job.message and "was lost while it ran the job" in job.message
        assert "NodeDiedError" in job.message or "WorkerCrashedError" in job.message
        assert wait_for(client, other, *FINAL).state == pb.SUCCEEDED
        deadline = time.monotonic() + 30
        while not gone(pid) and time.monotonic() < deadline:  # the worker dies with its node
            time.sleep(0.1)
        assert gone(pid)
    finally:
        if doomed in cluster.cluster.worker_nodes:
            cluster.cluster.remove_node(doomed)


def test_a_job_whose_ray_worker_died_before_it_started_runs_again(client: ConvertClient, cluster: RayCluster) -> None:
    """The task's Ray worker is killed while the job's worker imports torch (the job has not started): the job runs
    once more, elsewhere or there, and succeeds; the log says why."""
    job_id = client.submit(TINY)
    events = concurrent.futures.ThreadPoolExecutor(1).submit(lambda: list(client.watch(job_id)))
    deadline = time.monotonic() + 60
    while not (folders := list(cluster.jobs_dir.glob(f"*-{job_id}"))) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert folders, "the job's task never started"
    os.kill(int(folders[0].name.partition("-")[0]), signal.SIGKILL)  # the Ray worker running the task
    logs = [event.log for event in events.result(timeout=120) if event.log]
    job = client.get(job_id)
    assert job.state == pb.SUCCEEDED, job.message
    assert any(
        "was lost before the job started (WorkerCrashedError" in line and "it runs again" in line for line in logs
    )


def test_a_server_restart_fails_the_running_job_and_its_task_dies(cluster: RayCluster, tmp_path: Path) -> None:
    data = tmp_path / "data"
    options = ["--runner", "ray", "--ray-address", cluster.cluster.address, *FACTORIES]
    with running_server(data, *options) as server:
        with ConvertClient(server.address) as client:
            job_id = client.submit(SLOW)
        pid = worker_pid(cluster)
        server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not gone(pid) and time.monotonic() < deadline:  # Ray kills the tasks of a driver that died
        time.sleep(0.2)
    assert gone(pid)
    with running_server(data, *options) as server, ConvertClient(server.address) as client:
        job = client.get(job_id)
        assert (job.state, job.failure) == (pb.FAILED, pb.WORKER)
        assert "the server stopped while this job ran" in job.message
