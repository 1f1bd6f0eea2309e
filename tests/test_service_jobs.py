"""The jobs a server keeps on disk: DeleteJob and `convert jobs list|delete`, the retention sweeper, and what a
stopped server left behind removed at the next start (issue 13, item 8)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from servers import FACTORIES, running_server, wait_for

from convert import ConvertConfig
from convert.cli import main
from convert.job import JobOptions
from server.client import ConvertClient, ServiceError
from server.datadir import DataDir, Sweeper
from server.rpc import converter_pb2 as pb
from server.store import FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

SHAPE = ((1, 3, 16, 16),)


def job_with_files(data: DataDir, store: JobStore, job_id: str, state: str, finished: float | None = None) -> None:
    store.create(job_id, "test", {"model": "m"})
    store.update(job_id, state=state, **({} if finished is None else {"finished": finished}))
    for folder in (data.jobs / job_id, data.artifacts / job_id):
        folder.mkdir()
        (folder / "file").write_text("x")


def test_the_sweeper_deletes_only_jobs_finished_past_the_retention(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    store = JobStore(data.root / "jobs.sqlite")
    now = time.time()
    expired, recent, running = "a" * 32, "b" * 32, "c" * 32
    job_with_files(data, store, expired, SUCCEEDED, finished=now - 2 * 86400)
    job_with_files(data, store, recent, FAILED, finished=now - 3600)
    job_with_files(data, store, running, RUNNING)
    assert Sweeper(store, data, None, lambda: None, lambda _: False).sweep() == []  # no retention: kept forever
    assert Sweeper(store, data, 1.0, lambda: None, lambda _: False).sweep() == [expired]
    assert store.get(expired) is None and not (data.jobs / expired).exists() and not (data.artifacts / expired).exists()
    assert {store.get(recent).state, store.get(running).state} == {FAILED, RUNNING}
    assert (data.artifacts / recent / "file").exists()
    data.close()


def test_a_start_removes_what_a_stopped_server_left_behind(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    store = JobStore(data.root / "jobs.sqlite")
    done, queued_gone = "d" * 32, "e" * 32
    job_with_files(data, store, done, SUCCEEDED, finished=time.time())
    for name in ("job.json", "worker.log", "upload.pt", "pid"):  # the options and log stay, all else goes
        (data.jobs / done / name).write_text("x")
    (data.jobs / done / "out").mkdir()  # a half-written out/
    store.create(queued_gone, "test", {"model": "m"})  # queued, but its uploads are gone
    for folder in (data.jobs / ("f" * 32), data.artifacts / ("f" * 32), data.spares / "spare"):
        folder.mkdir()  # an upload that never became a job, artifacts of no job, a spare's folder
    removed = data.remove_orphans(store)
    assert len(removed) == 8, removed
    assert sorted(p.name for p in data.jobs.iterdir()) == [done] and not list(data.spares.iterdir())
    assert sorted(p.name for p in (data.jobs / done).iterdir()) == ["job.json", "worker.log"]
    assert sorted(p.name for p in data.artifacts.iterdir()) == [done]
    assert store.get(queued_gone).state == FAILED and "submit it again" in store.get(queued_gone).message
    assert store.get(queued_gone).state != QUEUED
    data.close()


@pytest.mark.slow  # a real server and its workers
def test_delete_job_and_the_jobs_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    with running_server(data, *FACTORIES, "--workers", "1") as server, ConvertClient(server.address) as client:
        tiny = JobOptions("service_models:tiny", input_shapes=SHAPE, config=ConvertConfig(rank="full"))
        done = wait_for(client, client.submit(tiny), pb.SUCCEEDED, pb.FAILED, timeout=120)
        assert done.state == pb.SUCCEEDED, done.message
        running = client.submit(JobOptions("service_models:slow", input_shapes=SHAPE))
        wait_for(client, running, pb.RUNNING, timeout=120)
        capsys.readouterr()

        assert main(["jobs", "list", "--server", server.address]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line.split()[:2] for line in lines] == [[running, "RUNNING"], [done.id, "SUCCEEDED"]]
        assert main(["jobs", "list", "--server", server.address, "--state", "succeeded"]) == 0
        assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [done.id]

        assert main(["jobs", "delete", "--server", server.address, running]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cancel it first, then delete it" in err, err
        with pytest.raises(SystemExit) as usage:  # argparse's one line
            main(["jobs", "delete", "--server", server.address])
        assert usage.value.code == 2 and "JOB_ID" in capsys.readouterr().err

        assert main(["jobs", "delete", "--server", server.address, done.id]) == 0
        assert capsys.readouterr().out.strip() == f"deleted {done.id}"
        assert not (data / "jobs" / done.id).exists() and not (data / "artifacts" / done.id).exists()
        with pytest.raises(ServiceError) as refused:
            client.get(done.id)
        assert refused.value.code.name == "NOT_FOUND"
        client.cancel(running)
        client.delete(running)  # once cancelled, it goes too
        assert client.list() == []
