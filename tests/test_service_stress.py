"""The service under hostile clients and faults, in the style of Triton's L0 stress tests: a flood of watches and
stalled uploads while another client works, kill -9 of workers and of the server, a full disk, the server's memory
over 200 jobs, and fuzzed Submit headers. Each test starts its own server (`python -m server`) on loopback and is
bounded in time."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
import service_models
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from servers import FACTORIES, SERVER, gone, health, running_server, server_env, wait_for, wait_for_file

from convert import ConvertConfig
from convert.job import JobOptions
from server.client import ConvertClient, ServiceError
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow  # real servers and their workers

SHAPE = ((1, 3, 16, 16),)
TINY = JobOptions("service_models:tiny", input_shapes=SHAPE, config=ConvertConfig(rank="full"))
SLOW = JobOptions("service_models:slow", input_shapes=SHAPE)


def header(weights: bytes) -> pb.SubmitHeader:
    """A factory with `weights` as its upload."""
    return pb.SubmitHeader(
        options=pb.JobOptions(input_shapes=[pb.Shape(dims=[1, 3, 16, 16])]),
        factory=pb.Factory(spec="service_models:tiny", weights_format=pb.Factory.SAFETENSORS),
        size_bytes=len(weights),
        sha256=hashlib.sha256(weights).hexdigest(),
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file(service_models.tiny().state_dict(), path)
    return path.read_bytes()


def submit_slowly(
    address: str, first: pb.SubmitHeader, chunk: bytes, hold: threading.Event, sent: threading.Semaphore | None = None
) -> grpc.RpcError | str:
    """Send the header (then release `sent`), wait for `hold`, then the chunk: the job id, or the error the server
    ended the call with."""

    def requests() -> Iterator[pb.SubmitRequest]:
        yield pb.SubmitRequest(header=first)
        if sent is not None:
            sent.release()
        hold.wait(60)
        yield pb.SubmitRequest(chunk=chunk)

    with grpc.insecure_channel(address) as channel:
        try:
            return pb_grpc.ConverterStub(channel).Submit(requests(), timeout=60).job_id
        except grpc.RpcError as e:
            return e


def in_threads(count: int, target, *args) -> list:
    results: list = [None] * count

    def run(index: int) -> None:
        results[index] = target(*args)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return results


# --- availability -------------------------------------------------------------------------------------------------


def test_watches_and_stalled_uploads_never_lock_the_others_out(tmp_path: Path, weights: bytes) -> None:
    limits = ["--max-watches", "4", "--max-per-client", "3", "--max-uploads", "2", "--max-concurrent-rpcs", "12"]
    limits += ["--upload-idle-timeout", "6", "--watch-max-age", "4"]  # long enough to see both uploads held
    with running_server(tmp_path / "data", *limits, *FACTORIES) as server, ConvertClient(server.address) as client:
        slow = client.submit(SLOW)
        wait_for(client, slow, pb.RUNNING)
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.ConverterStub(channel)
            watches = [stub.Watch(pb.WatchRequest(job_id=slow)) for _ in range(3)]
            assert [next(watch).state for watch in watches] == [pb.RUNNING] * 3
            with pytest.raises(grpc.RpcError) as error:  # a fourth from the same client
                next(stub.Watch(pb.WatchRequest(job_id=slow)))
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "this client (127.0.0.1) has 3 watches open" in error.value.details()

            hold, sent = threading.Event(), threading.Semaphore(0)  # two uploads that stall after their header
            stalled: list = []
            threads = [
                threading.Thread(
                    target=lambda: stalled.append(submit_slowly(server.address, header(weights), weights, hold, sent))
                )
                for _ in range(2)
            ]
            for thread in threads:
                thread.start()
            assert sent.acquire(timeout=30) and sent.acquire(timeout=30)  # both headers are on their way
            time.sleep(1)  # and with the server (a Submit of ours now would race them for a slot)
            with pytest.raises(ServiceError) as refused:
                client.submit(TINY)
            assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 uploads open" in str(refused.value)
            # the health check (its own port and the main one), and every short call, still answer
            assert health(server.health_address) == "SERVING" and health(server.address) == "SERVING"
            assert client.get(slow).state == pb.RUNNING and client.list()
            for thread in threads:
                thread.join(30)
            hold.set()
            assert [e.code() for e in stalled] == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
            assert all("sent nothing for 6 s" in e.details() for e in stalled)
            deadline = time.monotonic() + 15  # the stalled uploads' slots are free again, once their handlers end
            while True:
                try:
                    done = client.submit(TINY)
                    break
                except ServiceError as e:
                    if "2 uploads open" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert client.cancel(done).state == pb.CANCELLED  # queued behind the slow job on the one worker
            for watch in watches:
                watch.cancel()

        events: list[pb.JobEvent] = []  # a watch past --watch-max-age ends; the client watches again, unseen
        follower = threading.Thread(target=lambda: events.extend(client.watch(slow)))
        follower.start()
        time.sleep(6)
        client.cancel(slow)
        follower.join(30)
        assert events[-1].state == pb.CANCELLED
        assert sum(e.state == pb.RUNNING and not e.log for e in events) >= 2  # a current state per stream


def test_max_queued_holds_under_concurrent_submits(tmp_path: Path, weights: bytes) -> None:
    with running_server(tmp_path / "data", "--workers", "1", "--max-queued", "1", *FACTORIES) as server:
        with ConvertClient(server.address) as client:
            running = client.submit(SLOW)
            wait_for(client, running, pb.RUNNING)
            hold = threading.Event()
            timer = threading.Timer(3, hold.set)  # every upload is in flight at once, then all complete
            timer.start()
            results = in_threads(6, submit_slowly, server.address, header(weights), weights, hold)
            accepted = [r for r in results if isinstance(r, str)]
            refused = [r for r in results if not isinstance(r, str)]
            assert len(accepted) == 1, [getattr(r, "details", lambda r=r: r)() for r in results]
            assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all("queue is full" in e.details() for e in refused)
            client.cancel(running)


# --- faults: kill -9 ------------------------------------------------------------------------------------------------


def workers_of(server) -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process(server.process.pid).children(recursive=True)
        if "server.worker" in " ".join(p.cmdline())
    ]


def test_kill_9_of_a_worker_at_each_stage(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", "--workers", "1", *FACTORIES) as server:
        with ConvertClient(server.address) as client:
            # a spare that waits for its job: killed, it is replaced, and the next job runs
            deadline = time.monotonic() + 30
            while not workers_of(server) and time.monotonic() < deadline:
                time.sleep(0.1)
            for worker in workers_of(server):
                worker.kill()
            job = wait_for(client, client.submit(TINY), pb.SUCCEEDED, pb.FAILED, timeout=120)
            assert job.state == pb.SUCCEEDED, job.message  # before: FAILED, "most likely ... for want of memory"
            # a worker killed in the middle of its job fails that job, with how it ended
            slow = client.submit(SLOW)
            pid = int(wait_for_file(tmp_path / "data" / "jobs" / slow / "pid"))
            os.kill(pid, signal.SIGKILL)
            job = wait_for(client, slow, pb.FAILED)
            assert job.failure == pb.WORKER and "killed (SIGKILL)" in job.message
            assert wait_for(client, client.submit(TINY), pb.SUCCEEDED, pb.FAILED, timeout=120).state == pb.SUCCEEDED
            assert not client.list(states=[pb.RUNNING, pb.QUEUED])


def test_kill_9_of_the_server_then_restart(tmp_path: Path, weights: bytes) -> None:
    data = tmp_path / "data"
    with running_server(data, *FACTORIES) as server:
        with ConvertClient(server.address) as client:
            done = client.submit(TINY)
            wait_for(client, done, pb.SUCCEEDED)
            client.download(done, tmp_path / "before")
            slow = client.submit(SLOW)
            pid = int(wait_for_file(data / "jobs" / slow / "pid"))
            hold = threading.Event()  # an upload under way when the server dies
            uploading = threading.Thread(target=submit_slowly, args=(server.address, header(weights), weights, hold))
            uploading.start()
            deadline = time.monotonic() + 10
            while len(list((data / "jobs").iterdir())) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            second = subprocess.run(  # the data folder is locked: a second server refuses, and touches nothing
                [*SERVER, "--port", "0", "--data-dir", str(data)], env=server_env(), capture_output=True, text=True
            )
            assert second.returncode == 2 and "another server (pid" in second.stderr, second.stderr
            assert (data / "jobs" / slow).is_dir()
        server.stop(signal.SIGKILL)
        hold.set()
        uploading.join(30)
    deadline = time.monotonic() + 10
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(pid), "the worker outlived its server"
    with running_server(data, *FACTORIES) as server, ConvertClient(server.address) as client:
        jobs = {job.id: job for job in client.list()}
        assert set(jobs) == {done, slow}  # the interrupted upload left no job ...
        assert sorted(p.name for p in (data / "jobs").iterdir()) == sorted(jobs)  # ... and no folder
        assert sorted(p.name for p in (data / "artifacts").iterdir()) == [done]
        assert jobs[slow].state == pb.FAILED and "server stopped" in jobs[slow].message
        assert not [p for p in (data / "jobs" / slow).iterdir() if p.name not in ("job.json", "worker.log")]
        client.download(done, tmp_path / "after")
        for name in os.listdir(tmp_path / "before"):
            assert (tmp_path / "after" / name).read_bytes() == (tmp_path / "before" / name).read_bytes()
        assert oct((data).stat().st_mode & 0o777) == "0o700"  # umask 077: the server's user's only
        assert oct((data / "jobs.sqlite").stat().st_mode & 0o777) == "0o600"


# --- disk and memory ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(folder: Path, mb: int) -> Iterator[Path]:
    """A tmpfs of `mb` MiB at `folder` (root, as CI runs)."""
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}): the test needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_the_job_and_refuses_submits(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", 32) as disk:
        data = disk / "data"
        with running_server(data, "--workers", "1", "--min-free-mb", "8", *FACTORIES) as server:
            with ConvertClient(server.address) as client:
                job = wait_for(
                    client, client.submit(JobOptions("service_models:filler", input_shapes=SHAPE)), pb.FAILED
                )
                assert job.failure == pb.WORKER and "the server's disk filled up" in job.message, job.message
                assert not (data / "jobs" / job.id / "ballast").exists()  # the job's leftovers are gone
                start = time.monotonic()  # the pool goes on: a job runs, a cancel is prompt
                assert wait_for(client, client.submit(TINY), pb.SUCCEEDED, pb.FAILED).state == pb.SUCCEEDED
                slow = client.submit(SLOW)
                wait_for(client, slow, pb.RUNNING)
                assert client.cancel(slow).state == pb.CANCELLED
                assert time.monotonic() - start < 60
                big = header(b"x")
                big.size_bytes = 30 << 20  # more than the disk has, less than --max-upload-mb
                code, message = refused(server.address, big)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "the server's disk is full" in message
            start = time.monotonic()
        assert time.monotonic() - start < 15  # shutdown is prompt


def refused(address: str, first: pb.SubmitHeader) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.ConverterStub(channel).Submit(iter([pb.SubmitRequest(header=first)]), timeout=30)
        except grpc.RpcError as e:
            return e.code(), e.details()
    raise AssertionError("accepted")


def test_server_memory_is_bounded_over_200_jobs(tmp_path: Path) -> None:
    options = ["--workers", "1", "--max-queued", "300", *FACTORIES]
    with running_server(tmp_path / "data", *options) as server, ConvertClient(server.address) as client:
        busy = client.submit(SLOW)  # the worker is taken: every other job stays queued until cancelled
        wait_for(client, busy, pb.RUNNING)
        process = psutil.Process(server.process.pid)

        def jobs(count: int) -> None:
            for _ in range(count):
                job_id = client.submit(TINY)
                assert next(iter(client.watch(job_id))).state == pb.QUEUED
                client.cancel(job_id)
                client.get(job_id)

        jobs(20)  # warm: caches, threads, the first allocations
        before = process.memory_info().rss
        jobs(200)
        grown = (process.memory_info().rss - before) / 2**20
        assert grown < 24, f"the server grew by {grown:.1f} MiB over 200 jobs"
        assert len(client.list(limit=1000)) == 221
        client.cancel(busy)


# --- fuzzed Submit headers ------------------------------------------------------------------------------------------


def messages(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of `descriptor`'s type with any subset of fields set, to any value of their type (and extremes)."""
    fields = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:  # map<string, T>
            numbers = field.message_type.fields_by_name["value"].type == field.TYPE_DOUBLE
            values = st.floats(allow_nan=True, allow_infinity=True) if numbers else st.text(max_size=20)
            keys = st.one_of(st.text(max_size=20), st.sampled_from(["", "edge-cpu", "../x", "\x1b[31m"]))
            fields[field.name] = st.one_of(st.none(), st.dictionaries(keys, values, max_size=3))
            continue
        if field.message_type is not None:
            if depth >= 2:
                continue
            value = messages(field.message_type, depth + 1)
        elif field.type == field.TYPE_STRING:
            value = st.one_of(st.text(max_size=40), st.sampled_from(["", "auto", "synthetic", "(", "../x", "\x1b[31m"]))
        elif field.type == field.TYPE_BYTES:
            value = st.binary(max_size=64)
        elif field.type == field.TYPE_BOOL:
            value = st.booleans()
        elif field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
            value = st.floats(allow_nan=True, allow_infinity=True)
        elif field.type == field.TYPE_ENUM:
            value = st.integers(-1, len(field.enum_type.values) + 1)
        elif field.type in (field.TYPE_UINT32, field.TYPE_UINT64):
            value = (
                st.sampled_from([0, 1, 2, 7, 64, 2**31, 2**32 - 1])
                if field.type == field.TYPE_UINT32
                else (st.sampled_from([0, 1, 5000, 2**40, 2**64 - 1]))
            )
        else:
            value = st.integers(-(2**31), 2**31 - 1)
        if field.is_repeated:
            value = st.lists(value, max_size=4)
        fields[field.name] = st.one_of(st.none(), value)

    def build(values: dict) -> object:
        message = GetMessageClass(descriptor)()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(message, name) if field.is_repeated or field.message_type else None
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target.update(value)
            elif field.is_repeated:
                (target.extend if field.message_type is None else lambda v, t=target: [t.add().CopyFrom(x) for x in v])(
                    value
                )
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                with contextlib.suppress(ValueError):  # an enum value proto3 refuses is left unset
                    setattr(message, name, value)
        return message

    return st.fixed_dictionaries(fields).map(build)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    with running_server(root / "data", "--workers", "1", "--max-queued", "1000", *FACTORIES) as server:
        yield server


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=messages(pb.SubmitHeader.DESCRIPTOR), chunks=st.lists(st.binary(max_size=256), max_size=2))
def test_fuzzed_submit_headers_get_a_status_and_a_message(fuzzed_server, first, chunks) -> None:
    requests = [pb.SubmitRequest(header=first), *(pb.SubmitRequest(chunk=c) for c in chunks)]
    with grpc.insecure_channel(fuzzed_server.address) as channel:
        stub = pb_grpc.ConverterStub(channel)
        try:
            job_id = stub.Submit(iter(requests), timeout=30).job_id
        except grpc.RpcError as e:
            assert e.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), e.details()
            assert e.details() and "\n" not in e.details() and "Traceback" not in e.details()
        else:
            with contextlib.suppress(grpc.RpcError):  # it may have run already
                stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30)


def test_list_jobs_of_a_state_that_does_not_exist(fuzzed_server) -> None:
    with grpc.insecure_channel(fuzzed_server.address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            pb_grpc.ConverterStub(channel).ListJobs(pb.ListJobsRequest(states=[99]), timeout=30)
    assert (
        error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "state 99 is not a job state" in error.value.details()
    )
