"""The gRPC service, run for real (`python -m server` on a free loopback port), against local runs.

One server is shared by most tests (2 workers, a token, a 1 MiB upload limit, the test factories allowed);
tests that stop, restart or configure a server differently start their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import service_models
import torch
from safetensors.torch import save_file
from servers import CONVERT, FACTORIES, TOKEN, gone, health, running_server, server_env, wait_for, wait_for_file

from convert import ConvertConfig
from convert.distill.config import DistillConfig
from convert.job import DistillJob, JobOptions, run_job
from convert.runtime.export import OnnxConfig
from server.client import ConvertClient, JobFailed, ServiceError
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc

SHAPE = ((1, 3, 16, 16),)
TINY = JobOptions("service_models:tiny", input_shapes=SHAPE, config=ConvertConfig(rank="full"))
SLOW = JobOptions("service_models:slow", input_shapes=SHAPE)
FINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)

pytestmark = pytest.mark.slow  # each test starts or uses a real server and its worker processes


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("shared")
    options = ["--workers", "2", "--auth-token", TOKEN, "--max-upload-mb", "1", "--worker-memory-mb", "2048"]
    with running_server(root / "data", *options, *FACTORIES, "--reflection") as server:
        yield server


@pytest.fixture
def client(shared) -> ConvertClient:
    with ConvertClient(shared.address, auth_token=TOKEN) as c:
        yield c


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "tiny.safetensors"
    save_file(service_models.tiny().state_dict(), path)
    return path


def flat(value, prefix: str = "") -> dict:
    """Nested dicts and lists as one dict {"a.0.b": leaf} (for pytest.approx, which takes no nesting)."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None:
        return {prefix: value}
    return {key: leaf for k, v in items for key, leaf in flat(v, f"{prefix}.{k}" if prefix else str(k)).items()}


def without_timings(report: dict) -> dict:
    """The report but for its timings and where it ran (`placement`: the service's record, None for a local run)."""
    return {key: value for key, value in report.items() if key not in ("seconds", "placement")}


# --- round trip ---------------------------------------------------------------------------------------------------


def test_round_trip_matches_a_local_run(client: ConvertClient, weights: Path, tmp_path: Path) -> None:
    options = JobOptions("service_models:tiny", str(weights), SHAPE, onnx=OnnxConfig())
    local = run_job(options, tmp_path / "local")
    seen: list[tuple[str, float]] = []
    remote = client.run(options, tmp_path / "remote", progress=lambda what, f: seen.append((what, f)))
    assert without_timings(remote.to_dict()) == without_timings(local.to_dict())
    assert local.placement is None and (remote.placement.runner, remote.placement.node) == ("local", None)
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == files
    assert {"model.pt", "report.json", "report.md", "original.onnx", "model.onnx"} <= set(files)
    for name in ("report.json", "report.md"):  # seconds aside, the same text
        local_json = json.loads((tmp_path / "local/report.json").read_text())
        remote_json = json.loads((tmp_path / "remote/report.json").read_text())
        assert without_timings(remote_json) == without_timings(local_json), name
    x = torch.randn(2, 3, 16, 16)
    models = [torch.load(tmp_path / f"{run}/model.pt", weights_only=False) for run in ("local", "remote")]
    torch.testing.assert_close(models[1](x), models[0](x), rtol=0, atol=0)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"trace", "factorize"} <= {what for what, _ in seen}


def test_cli_through_the_server_prints_the_local_report(shared, weights: Path, tmp_path: Path) -> None:
    args = ["service_models:tiny", "--weights", str(weights), "--input-shape", "1,3,16,16", "--rank", "full", "--json"]
    env = dict(server_env(), CONVERT_AUTH_TOKEN=TOKEN)
    results = [
        subprocess.run(
            [*CONVERT, *args, "-o", str(tmp_path / run), *extra], env=env, capture_output=True, text=True, timeout=120
        )
        for run, extra in (("local", []), ("remote", ["--server", shared.address]))
    ]
    for result in results:
        assert result.returncode == 0, result.stderr
    local, remote = (json.loads(result.stdout) for result in results)
    assert without_timings(remote) == without_timings(local)
    assert json.loads((tmp_path / "remote/report.json").read_text()) == remote
    # a server that is not there: one line that says what to check, exit 2, nothing written
    result = subprocess.run(
        [*CONVERT, *args, "-o", str(tmp_path / "nowhere"), "--server", "127.0.0.1:9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot reach the conversion server at 127.0.0.1:9" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_options_once_dropped_reach_the_worker(client: ConvertClient, tmp_path: Path) -> None:
    """`transposed`, `include_grouped` and the distillation's `device` without a benchmark had no proto field: the
    service ran the defaults. Now the server's run is the local one."""
    torch.manual_seed(1)
    save_file(service_models.mixed().state_dict(), tmp_path / "mixed.safetensors")
    config = ConvertConfig(rank="full", transposed="skip", include_grouped=True)
    options = JobOptions("service_models:mixed", str(tmp_path / "mixed.safetensors"), SHAPE, config=config)
    local = run_job(options, tmp_path / "local")
    remote = client.run(options, tmp_path / "remote")
    assert without_timings(remote.to_dict()) == without_timings(local.to_dict())
    assert (remote.options["transposed"], remote.options["include_grouped"]) == ("skip", True)
    assert [layer.status for layer in remote.layers] == ["converted", "converted", "skipped"]  # the defaults' reverse
    assert "transposed conv" in remote.layers[2].reason

    device = DistillConfig(steps=1, batch_size=2, device="cuda")
    job = wait_for(client, client.submit(dataclasses.replace(TINY, distill=DistillJob(("synthetic",), device))), *FINAL)
    if torch.cuda.is_available():
        assert job.state == pb.SUCCEEDED, job.message
        assert json.loads(job.report_json)["distill"]["device"].startswith("cuda")
    else:  # the worker was asked for CUDA, and said it has none (with "auto" it would have trained on the CPU)
        assert (job.state, job.failure) == (pb.FAILED, pb.BAD_INPUT) and "CUDA GPU" in job.message


# --- watch, cancel, limits ------------------------------------------------------------------------------------------


def test_watch_streams_progress_and_a_reconnect_gets_the_current_state(client: ConvertClient) -> None:
    job_id = client.submit(TINY)
    events = list(client.watch(job_id))
    states = [e.state for e in events if not e.log]
    assert states[0] in (pb.QUEUED, pb.RUNNING) and states[-1] == pb.SUCCEEDED
    assert pb.RUNNING in states and states.index(pb.RUNNING) < states.index(pb.SUCCEEDED)
    progress = [e.progress for e in events if not e.log]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert {"load", "trace", "factorize"} <= {e.stage for e in events}
    again = list(client.watch(job_id))  # after the end: the current state, and nothing else
    assert [(e.state, e.progress) for e in again] == [(pb.SUCCEEDED, 1.0)]

    slow = client.submit(SLOW)
    wait_for(client, slow, pb.RUNNING)
    first = next(iter(client.watch(slow)))  # a reconnecting client: the state first
    assert first.state == pb.RUNNING and first.job_id == slow
    client.cancel(slow)


def test_cancel_kills_the_worker_and_a_queued_job_never_runs(client: ConvertClient, shared) -> None:
    running = [client.submit(SLOW) for _ in range(2)]  # both workers busy
    queued = client.submit(SLOW)
    for job_id in running:
        wait_for(client, job_id, pb.RUNNING)
    pids = [int(wait_for_file(Path(shared_data(shared)) / "jobs" / job_id / "pid")) for job_id in running]
    assert client.get(queued).state == pb.QUEUED
    assert client.cancel(queued).state == pb.CANCELLED
    for job_id, pid in zip(running, pids, strict=True):
        job = client.cancel(job_id)
        assert job.state == pb.CANCELLED and "cancelled" in job.message
        assert gone(pid), "the worker still runs"
    with pytest.raises(ServiceError) as refused:
        client.cancel(queued)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not (Path(shared_data(shared)) / "jobs" / queued / "pid").exists()  # it never ran


def shared_data(server) -> Path:
    return Path(server.log).parent / "data"


def test_eight_jobs_at_once_with_two_workers_all_finish(client: ConvertClient) -> None:
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(client.submit(TINY))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    jobs = [wait_for(client, job_id, pb.SUCCEEDED, pb.FAILED, timeout=120) for job_id in ids]
    assert [pb.JobState.Name(job.state) for job in jobs] == ["SUCCEEDED"] * 8, [job.message for job in jobs]
    # never more than two at once: at each start, fewer than two others were running
    for job in jobs:
        overlapping = [o for o in jobs if o.id != job.id and o.started_at <= job.started_at < o.finished_at]
        assert len(overlapping) <= 1
    listed = {job.id for job in client.list(states=[pb.SUCCEEDED], limit=1000)}
    assert set(ids) <= listed


def test_a_crash_or_memory_hog_fails_its_job_not_the_server(client: ConvertClient, shared) -> None:
    crash = client.submit(JobOptions("service_models:segfault", input_shapes=SHAPE))
    hog = client.submit(JobOptions("service_models:hog", input_shapes=SHAPE))
    job = wait_for(client, crash, pb.FAILED)
    assert job.failure == pb.WORKER and "SIGSEGV" in job.message
    job = wait_for(client, hog, pb.FAILED)  # torch's "can't allocate memory" is told as the worker's limit
    assert job.failure == pb.WORKER and "the job ran out of memory (the worker limit is 2048 MiB)" in job.message
    assert client.get(client.submit(TINY)).id  # the server still takes jobs ...
    assert health(shared.address) == "SERVING"  # ... and is well


def test_time_limit_queue_bound_and_rpc_bound(tmp_path: Path) -> None:
    serve = (*CONVERT, "serve")  # `convert serve` is `python -m server`
    limits = ["--job-time-limit", "8", "--max-queued", "1", "--max-concurrent-rpcs", "5", "--max-watches", "3"]
    limits += ["--max-uploads", "1"]
    with running_server(tmp_path / "data", *limits, *FACTORIES, program=serve) as server:
        with ConvertClient(server.address) as client:
            job_id = client.submit(SLOW)
            pid = int(wait_for_file(tmp_path / "data" / "jobs" / job_id / "pid"))
            queued = client.submit(SLOW)
            with pytest.raises(ServiceError) as error:
                client.submit(SLOW)
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in str(error.value)
            with grpc.insecure_channel(server.address) as channel:
                stub = pb_grpc.ConverterStub(channel)
                watches = [stub.Watch(pb.WatchRequest(job_id=job_id)) for _ in range(3)]
                assert all(next(watch).state == pb.RUNNING for watch in watches)  # 3 calls held open
                with pytest.raises(grpc.RpcError) as error:
                    next(stub.Watch(pb.WatchRequest(job_id=job_id)))
                assert (
                    error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    and "3 watches open" in error.value.details()
                )
                assert client.list()  # the other calls keep their share
                for watch in watches:
                    watch.cancel()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the server frees the calls as it learns they ended
                with contextlib.suppress(ServiceError):
                    client.cancel(queued)
                    break
                time.sleep(0.1)
            assert client.get(queued).state == pb.CANCELLED
            job = wait_for(client, job_id, pb.FAILED)
            assert job.failure == pb.WORKER and "time limit of 8 s" in job.message
            assert gone(pid)


# --- restarts and shutdown ------------------------------------------------------------------------------------------


def test_restart_keeps_finished_jobs_and_never_leaves_one_running(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data, *FACTORIES, "--grace", "5") as server:
        with ConvertClient(server.address) as client:
            done = client.submit(TINY)
            wait_for(client, done, pb.SUCCEEDED)
            client.download(done, tmp_path / "first")
            stopped = client.submit(SLOW)
            wait_for(client, stopped, pb.RUNNING)
            assert health(server.address) == "SERVING"
        server.process.send_signal(signal.SIGTERM)
        deadline, status = time.monotonic() + 5, "SERVING"
        while status == "SERVING" and time.monotonic() < deadline:
            status = health(server.address, timeout=1)
        assert status == "NOT_SERVING"  # while the running job has its grace period
        assert server.stop() == 0

    with running_server(data, *FACTORIES) as server:
        with ConvertClient(server.address) as client:
            assert client.get(done).state == pb.SUCCEEDED
            client.download(done, tmp_path / "second")
            for name in ("model.pt", "report.json", "report.md"):
                assert (tmp_path / "second" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()
            job = client.get(stopped)
            assert job.state == pb.FAILED and "shut down" in job.message
            killed = client.submit(SLOW)
            wait_for(client, killed, pb.RUNNING)
            pid = int(wait_for_file(data / "jobs" / killed / "pid"))
        server.stop(signal.SIGKILL)  # no chance to clean up

    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(pid), "the worker outlived its server"
    with running_server(data, *FACTORIES) as server:
        with ConvertClient(server.address) as client:
            job = client.get(killed)
            assert job.state == pb.FAILED and "server stopped" in job.message
            assert client.get(done).state == pb.SUCCEEDED


# --- bad input ------------------------------------------------------------------------------------------------------


def raw_submit(address: str, header: pb.SubmitHeader, chunks: list[bytes], token: str | None = TOKEN) -> str:
    """Submit a stream as given (no client-side checks)."""
    requests = [pb.SubmitRequest(header=header), *(pb.SubmitRequest(chunk=c) for c in chunks)]
    with grpc.insecure_channel(address) as channel:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return pb_grpc.ConverterStub(channel).Submit(iter(requests), metadata=metadata).job_id


def refused(address: str, header: pb.SubmitHeader, chunks: list[bytes], token: str | None = TOKEN):
    with pytest.raises(grpc.RpcError) as error:
        raw_submit(address, header, chunks, token)
    return error.value.code(), error.value.details()


def factory_header(data: bytes, spec: str = "service_models:tiny", **fields) -> pb.SubmitHeader:
    header = pb.SubmitHeader(
        options=pb.JobOptions(input_shapes=[pb.Shape(dims=[1, 3, 16, 16])]),
        factory=pb.Factory(spec=spec, weights_format=pb.Factory.SAFETENSORS),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    for name, value in fields.items():
        setattr(header, name, value)
    return header


def test_bad_uploads(shared, client: ConvertClient, weights: Path) -> None:
    data = weights.read_bytes()
    code, message = refused(shared.address, factory_header(os.urandom(5000)), [os.urandom(5000)])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in message  # another random draw
    noise = os.urandom(5000)
    code, message = refused(shared.address, factory_header(noise), [noise])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a PyTorch file" in message
    code, message = refused(shared.address, factory_header(data), [data[: len(data) // 2]])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in message
    code, message = refused(shared.address, factory_header(data, sha256="0" * 64), [data])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in message
    code, message = refused(shared.address, factory_header(data, size_bytes=2 << 20), [data])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-upload-mb" in message
    big = b"\0" * (600 << 10)
    code, message = refused(shared.address, factory_header(data, size_bytes=len(data), sha256=""), [data, big])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "longer than" in message
    code, message = refused(shared.address, factory_header(data, spec="os:system"), [data])
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "allowlist" in message
    code, message = refused(shared.address, factory_header(data, spec="timm:resnet18"), [data])  # what it names
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'timm.models:resnet18' is not on this server's" in message
    code, message = refused(shared.address, factory_header(data), [data], token="wrong")
    assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in message
    assert health(shared.address) == "SERVING"  # the health check needs no token

    def vanishing_client():  # a client that dies in the middle of its upload
        yield pb.SubmitRequest(header=factory_header(data))
        yield pb.SubmitRequest(chunk=data[:100])
        raise ConnectionError("the client went away")

    jobs_before = {job.id for job in client.list(limit=1000)}
    with grpc.insecure_channel(shared.address) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.ConverterStub(channel).Submit(vanishing_client(), metadata=(("authorization", f"Bearer {TOKEN}"),))
    deadline = time.monotonic() + 10
    while list((shared_data(shared) / "jobs").glob("*/upload.part")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((shared_data(shared) / "jobs").glob("*/upload.part"))  # nothing half-uploaded is kept
    assert {job.id for job in client.list(limit=1000)} == jobs_before


def test_bad_options(client: ConvertClient) -> None:
    cases = [
        (pb.JobOptions(rank=2, energy=0.9), "either a rank or an energy"),
        (pb.JobOptions(target="sideways"), "unknown target"),
        (pb.JobOptions(input_dtype="float8"), "input dtype"),
        (pb.JobOptions(distill=pb.DistillOptions(data="images/")), "not available on the service"),
    ]
    for options, expected in cases:
        header = pb.SubmitHeader(options=options, factory=pb.Factory(spec="service_models:tiny"))
        code, message = refused(client.address, header, [])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in message, message
    # known only once the model is there: the job fails, as a local run would
    misfit = JobOptions("service_models:tiny", input_shapes=SHAPE, config=ConvertConfig(target="grouped", groups=5))
    job = wait_for(client, client.submit(misfit), pb.FAILED)
    assert job.failure == pb.BAD_INPUT and "`groups`=5 fits no layer" in job.message


# --- distillation on uploaded inputs --------------------------------------------------------------------------------

TIMINGS = ("seconds", "steps_per_second", "eval_seconds")


def test_distill_on_uploaded_inputs_matches_a_local_run(shared, weights: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "data.npy", rng.standard_normal((12, 3, 16, 16), dtype=np.float32))
    np.save(tmp_path / "val.npy", rng.standard_normal((4, 3, 16, 16), dtype=np.float32))
    args = [*("service_models:tiny", "--weights", str(weights), "--input-shape", "1,3,16,16", "--json")]
    args += [*("--distill", "data.npy", "--val", "val.npy", "--steps", "4", "--batch-size", "4", "--seed", "7")]
    env = dict(server_env(), CONVERT_AUTH_TOKEN=TOKEN, OMP_NUM_THREADS="1")  # as the server's workers run
    local, remote = (
        subprocess.run([*CONVERT, *args, "-o", run, *extra], cwd=tmp_path, env=env, capture_output=True, text=True)
        for run, extra in (("local", []), ("remote", ["--server", shared.address]))
    )
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    local, remote = json.loads(local.stdout), json.loads(remote.stdout)
    local_distill, remote_distill = local.pop("distill"), remote.pop("distill")
    assert without_timings(remote) == without_timings(local)
    # the same training, on the same inputs: the files' names on the server differ, the figures do not
    assert local_distill["data"] == "12 inputs from data.npy"
    assert local_distill["val_data"] == "--val 4 inputs from val.npy"
    assert remote_distill["data"] == "12 inputs from upload-data-1.npy"
    assert remote_distill["val_data"] == "--val 4 inputs from upload-val-1.npy"
    assert remote_distill["steps"] == 4 and not remote_distill["synthetic"]
    assert math.isfinite(remote_distill["loss_end"])
    local_figures, remote_figures = (
        {k: v for k, v in flat(d).items() if k.split(".")[0] not in (*TIMINGS, "data", "val_data")}
        for d in (local_distill, remote_distill)
    )
    floats = {k for k, v in local_figures.items() if isinstance(v, float)}
    assert {k: v for k, v in remote_figures.items() if k not in floats} == {
        k: v for k, v in local_figures.items() if k not in floats
    }
    for key in floats:  # the worker's thread count may round differently from the local run's
        assert remote_figures[key] == pytest.approx(local_figures[key], rel=1e-5), key
    x = torch.randn(2, 3, 16, 16)
    models = [torch.load(tmp_path / run / "model.pt", weights_only=False) for run in ("local", "remote")]
    torch.testing.assert_close(models[1](x), models[0](x), rtol=1e-5, atol=1e-6)
    jobs = shared_data(shared) / "jobs"
    assert not list(jobs.glob("*/upload*"))  # the uploads are removed once their jobs have finished


def test_uploaded_inputs_are_read_in_the_worker(client: ConvertClient, tmp_path: Path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((6, 3, 8, 8), np.float32))  # the model takes 3x16x16
    np.save(tmp_path / "val.npy", np.ones((3, 3, 16, 16), np.float32))
    wrong = JobOptions(**{**vars(TINY), "distill": DistillJob(data=(str(tmp_path / "small.npy"),))})
    synthetic = DistillJob(data=("synthetic",), config=DistillConfig(steps=2), val=(str(tmp_path / "val.npy"),))
    ids = [client.submit(wrong), client.submit(JobOptions(**{**vars(TINY), "distill": synthetic}))]
    job = wait_for(client, ids[0], pb.FAILED)
    assert job.failure == pb.BAD_INPUT, job.message
    assert "upload-data-1.npy is shaped 6x3x8x8, the model takes inputs shaped N x 3x16x16" in job.message
    job = wait_for(client, ids[1], pb.SUCCEEDED, pb.FAILED)
    assert job.state == pb.SUCCEEDED, job.message
    distill = json.loads(job.report_json)["distill"]  # synthetic training, uploaded validation inputs
    assert distill["synthetic"] and distill["steps"] == 2
    assert distill["val_data"] == "--val 3 inputs from upload-val-1.npy"
    assert client.get(ids[1]).options.distill.data == "synthetic"


def data_header(data_files: list[pb.DataFile], distill: bool = True) -> pb.SubmitHeader:
    """A factory without weights, then `data_files`."""
    options = pb.JobOptions(input_shapes=[pb.Shape(dims=[1, 3, 16, 16])])
    if distill:
        options.distill.steps = 1
    return pb.SubmitHeader(options=options, factory=pb.Factory(spec="service_models:tiny"), data_files=data_files)


def test_bad_data_uploads(shared, client: ConvertClient, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    npy = (tmp_path / "x.npy").read_bytes()
    torch.save(torch.zeros(4, 3, 16, 16), tmp_path / "x.pt")
    pt = (tmp_path / "x.pt").read_bytes()
    jobs_before = {job.id for job in client.list(limit=1000)}

    def part(data: bytes, **fields) -> pb.DataFile:
        defaults = {"role": pb.DataFile.TRAIN, "format": pb.DataFile.NPY, "size_bytes": len(data), "filename": "x.npy"}
        return pb.DataFile(**(defaults | fields))

    cases = [  # (header, chunks, status, message)
        (data_header([part(pt)]), [pt], "INVALID_ARGUMENT", "x.npy is a .pt file, not the declared NPY"),
        (data_header([part(npy)]), [npy[:100]], "INVALID_ARGUMENT", "data file x.npy is truncated: 100 of"),
        (data_header([part(npy, sha256="0" * 64)]), [npy], "INVALID_ARGUMENT", "the sha256 of data file x.npy is"),
        (data_header([part(npy)]), [npy + b"x"], "INVALID_ARGUMENT", "longer than its size in the header"),
        (data_header([part(npy)]), [npy, b"x"], "INVALID_ARGUMENT", "longer than the header's sizes"),
        (data_header([part(npy)], distill=False), [npy], "INVALID_ARGUMENT", "data files go with distillation"),
        (data_header([part(b"")]), [], "INVALID_ARGUMENT", "data file x.npy is empty"),
        (data_header([pb.DataFile(size_bytes=1)]), [b"x"], "INVALID_ARGUMENT", "role is not set"),
        (data_header([part(npy)] * 33), [], "INVALID_ARGUMENT", "over the limit of 32"),
        (data_header([part(npy, size_bytes=2 << 20)]), [], "RESOURCE_EXHAUSTED", "and 1 data file) is 2.0 MiB"),
    ]
    weights = factory_header(npy)  # a chunk that spans the weights and the data file
    weights.data_files.append(part(npy))
    weights.options.distill.steps = 1
    cases.append((weights, [npy + npy], "INVALID_ARGUMENT", "a chunk holds bytes of two files"))
    for header, chunks, status, expected in cases:
        code, message = refused(shared.address, header, chunks)
        assert (code.name, expected in message) == (status, True), message
    # through the client: data over the limit is refused before a byte of it is sent
    np.save(tmp_path / "big.npy", np.zeros((2, 3, 256, 256), np.float32))  # 1.5 MiB, over the server's 1 MiB
    with pytest.raises(ServiceError) as error:
        client.submit(JobOptions(**{**vars(TINY), "distill": DistillJob(data=(str(tmp_path / "big.npy"),))}))
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-upload-mb" in str(error.value)
    assert {job.id for job in client.list(limit=1000)} == jobs_before  # no job, and no file left behind
    assert not list((shared_data(shared) / "jobs").glob("*/upload*.part"))


def raw_download(address: str, job_id: str, name: str) -> bytes:
    with grpc.insecure_channel(address) as channel:
        request = pb.DownloadRequest(job_id=job_id, name=name)
        chunks = pb_grpc.ConverterStub(channel).Download(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
        return b"".join(chunk.data for chunk in chunks)


def test_unknown_and_malformed_job_ids(client: ConvertClient, shared) -> None:
    def download(job_id: str, name: str = "model.pt") -> None:
        try:
            raw_download(shared.address, job_id, name)
        except grpc.RpcError as e:
            raise ServiceError(e.code(), e.details()) from None

    for call in (client.get, client.cancel, lambda job_id: list(client.watch(job_id)), download):
        with pytest.raises(ServiceError) as error:
            call("0" * 32)
        assert error.value.code == grpc.StatusCode.NOT_FOUND and "no job" in str(error.value)
        with pytest.raises(ServiceError) as error:
            call("../../etc/passwd")
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and "32 hex digits" in str(error.value)
    running = client.submit(SLOW)
    with pytest.raises(ServiceError) as error:
        download(running)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION and "SUCCEEDED" in str(error.value)
    client.cancel(running)
    done = client.submit(TINY)
    wait_for(client, done, pb.SUCCEEDED)
    with pytest.raises(ServiceError) as error:
        download(done, "../../jobs.sqlite")
    assert error.value.code == grpc.StatusCode.NOT_FOUND and "no artifact" in str(error.value)
    assert (
        raw_download(shared.address, done, "report.json")
        == (shared_data(shared) / "artifacts" / done / "report.json").read_bytes()
    )


class _Payload:
    """Unpickling this creates a file: what a malicious 'model' does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_creates_a_file_never_runs(shared, client: ConvertClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"weight": _Payload(marker)}, evil)
    # as a model file, through the command line: refused by the server, not loaded on the client
    result = subprocess.run(
        [*CONVERT, str(evil), "--input-shape", "1,3,16,16", "--server", shared.address, "--auth-token", TOKEN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "runs code" in result.stderr and "factory spec" in result.stderr and "safetensors" in result.stderr
    # as weights: accepted (it is a torch.save archive), then refused by torch.load(weights_only=True) in the worker
    job_id = client.submit(JobOptions("service_models:tiny", str(evil), SHAPE))
    # as distillation inputs: accepted (a torch.save archive), then refused by torch.load(weights_only=True)
    data = client.submit(JobOptions("service_models:tiny", input_shapes=SHAPE, distill=DistillJob(data=(str(evil),))))
    job = wait_for(client, job_id, pb.FAILED)
    assert job.failure == pb.BAD_INPUT and "state dict" in job.message
    job = wait_for(client, data, pb.FAILED)
    assert job.failure == pb.BAD_INPUT and "cannot read inputs from upload-data-1.pt" in job.message, job.message
    assert not marker.exists()
    assert not list(shared_data(shared).rglob("pwned"))


def test_untrusted_code_only_when_allowed_and_only_in_the_worker(tmp_path: Path) -> None:
    model = service_models.tiny()
    torch.save(model, tmp_path / "whole.pt")
    with running_server(tmp_path / "data", "--allow-untrusted-code") as server:
        with ConvertClient(server.address) as client:
            report = client.run(JobOptions(str(tmp_path / "whole.pt"), input_shapes=SHAPE), tmp_path / "out")
            assert report.totals.converted == 2
            noise = os.urandom(4096)
            header = pb.SubmitHeader(
                options=pb.JobOptions(), model_file=pb.ModelFile(format=pb.ModelFile.PICKLE), size_bytes=len(noise)
            )
            code, message = refused(server.address, header, [noise], token=None)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not the declared" in message


def test_a_failed_job_raises_with_its_message(client: ConvertClient, tmp_path: Path) -> None:
    with pytest.raises(JobFailed, match="give `input_shapes` of the shapes it expects"):
        client.run(JobOptions("service_models:tiny", input_shapes=((1, 5, 16, 16),)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- transport ------------------------------------------------------------------------------------------------------


def test_reflection_lists_the_service(shared) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    def services(metadata) -> list[str]:
        with grpc.insecure_channel(shared.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            (response,) = stub.ServerReflectionInfo(iter([request]), metadata=metadata)
            return [service.name for service in response.list_services_response.service]

    assert "convert.v1.Converter" in services((("authorization", f"Bearer {TOKEN}"),))
    with pytest.raises(grpc.RpcError) as error:  # behind the token, as every call but the health check
        services(())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    with running_server(tmp_path / "data", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        with ConvertClient(server.address, tls_ca=cert) as client:
            assert client.list() == []
        with ConvertClient(server.address) as plaintext, pytest.raises(ServiceError) as error:
            plaintext.list()
        assert error.value.code == grpc.StatusCode.UNAVAILABLE and "cannot reach" in str(error.value)
