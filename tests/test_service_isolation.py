"""What a worker can reach. With --allow-untrusted-code, uploaded code runs in a bubblewrap sandbox: each escape the
review found must fail (the token from the environment or another process, another job's artifact or the job
records rewritten, the network, a double-forked process outliving cancel). Without a sandbox the server refuses to
start unless told to trust uploaded code. And no worker imports from the server's folder before the installed
packages (a `safetensors.py` there once ran in every worker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import service_models
import torch
from safetensors.torch import save_file
from servers import FACTORIES, SERVER, TOKEN, running_server, server_env, wait_for, wait_for_file

from convert import ConvertConfig
from convert.job import JobOptions
from server.client import ConvertClient
from server.rpc import converter_pb2 as pb

pytestmark = pytest.mark.slow  # real servers and their workers

SHAPE = ((1, 3, 16, 16),)
MARKER = "i-am-the-grandchild-of-an-uploaded-model"
NEEDS_BWRAP = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap (.ci/run installs it)")
# What the sandboxed worker's environment may hold: nothing of the server's but the import path and the locale.
SANDBOX_ENV = {"PATH", "HOME", "PYTHONPATH", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "PWD"}
SANDBOX_ENV |= {"CONVERT_WORKER_THREADS", "OMP_NUM_THREADS", "CONVERT_FACTORY_PATH"}
SANDBOX_ENV |= {"TORCHINDUCTOR_CACHE_DIR"}  # set by torch itself inside (torch/_inductor/runtime/cache_dir_utils.py)

ESCAPES = """
import json, os, socket, sys, time
loot = {"uid": os.getuid(), "env": dict(os.environ), "procs": []}
for pid in filter(str.isdigit, os.listdir("/proc")):
    for what in ("cmdline", "environ"):
        try:
            loot["procs"].append(open(f"/proc/{pid}/{what}", "rb").read().decode(errors="replace"))
        except OSError:
            pass
def attempt(name, action):
    try:
        loot[name] = action()
    except OSError as e:
        loot[name] = "refused: " + str(e)
attempt("artifact", lambda: open(TARGET, "wb").write(b"tampered"))
attempt("records", lambda: open(RECORDS, "ab").write(b"tampered"))
attempt("data", lambda: os.listdir(DATA))
attempt("network", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=3) and "connected")
open("loot.json", "w").write(json.dumps(loot))
if os.fork() == 0:  # a grandchild in a session of its own: out of the worker's process group
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", MARKER])
    os._exit(0)
time.sleep(600)
"""


class _Escape:
    """Unpickling this runs `code`: what a malicious whole-model pickle does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return (exec, (self.code, {}))  # globals of its own: the functions it defines see its names


def marked() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if MARKER in " ".join(p.info["cmdline"] or ())]


@NEEDS_BWRAP
def test_uploaded_code_cannot_escape_its_sandbox(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = dict(server_env(), CONVERT_AUTH_TOKEN=TOKEN)  # the token in the server's environment, as in Docker
    with running_server(data, "--allow-untrusted-code", "--workers", "1", *FACTORIES, env=env) as server:
        assert "sandbox: bubblewrap" in server.log.read_text()
        with ConvertClient(server.address, auth_token=TOKEN) as client:
            victim = client.submit(JobOptions("service_models:tiny", input_shapes=SHAPE))
            victim_job = wait_for(client, victim, pb.SUCCEEDED, pb.FAILED, timeout=120)
            assert victim_job.state == pb.SUCCEEDED, victim_job.message
            target = data / "artifacts" / victim / "model.pt"
            before = target.read_bytes()
            port = int(server.address.rpartition(":")[2])
            code = f"TARGET, RECORDS, DATA, PORT, MARKER = {str(target)!r}, {str(data / 'jobs.sqlite')!r}, "
            code += f"{str(data)!r}, {port}, {MARKER!r}\n{ESCAPES}"
            torch.save(_Escape(code), tmp_path / "evil.pt")
            evil = client.submit(JobOptions(str(tmp_path / "evil.pt"), input_shapes=SHAPE))
            loot = json.loads(wait_for_file(data / "jobs" / evil / "loot.json", timeout=120))
            assert TOKEN not in json.dumps(loot)  # not in its environment, not in any process it can see
            assert set(loot["env"]) <= SANDBOX_ENV, sorted(loot["env"])
            assert loot["uid"] == 65534
            assert str(loot["artifact"]).startswith("refused") and str(loot["records"]).startswith("refused")
            assert "jobs.sqlite" not in str(loot["data"])  # the data folder is not there to see
            assert str(loot["network"]).startswith("refused")
            deadline = time.monotonic() + 30
            while not marked() and time.monotonic() < deadline:
                time.sleep(0.1)
            (grandchild,) = marked()
            if os.geteuid() == 0:
                assert grandchild.uids().real == 65534  # an unprivileged uid outside the sandbox too
            start = time.monotonic()
            assert client.cancel(evil).state == pb.CANCELLED
            assert time.monotonic() - start < 15
            deadline = time.monotonic() + 10
            while marked() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not marked(), "a process started by the uploaded code outlived its job"
            assert target.read_bytes() == before
            client.download(victim, tmp_path / "victim")  # the recorded digest still matches the file
            assert (tmp_path / "victim" / "model.pt").read_bytes() == before


def test_untrusted_code_without_a_sandbox_needs_the_operators_word(tmp_path: Path) -> None:
    no_bwrap = dict(server_env(), PATH=str(tmp_path))  # nothing to run there: no sandbox can be had
    result = subprocess.run(
        [*SERVER, "--port", "0", "--data-dir", str(tmp_path / "data"), "--allow-untrusted-code"],
        env=no_bwrap,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "needs a sandbox for the workers, and there is none: bubblewrap is not installed" in result.stderr
    assert "--trust-uploaded-code" in result.stderr
    with running_server(tmp_path / "data", "--allow-untrusted-code", "--trust-uploaded-code", env=no_bwrap) as server:
        log = server.log.read_text()
        assert "sandbox: off (trusted uploaded code)" in log and "uploaded code runs unsandboxed" in log


def test_the_servers_folder_comes_last_on_the_workers_import_path(tmp_path: Path) -> None:
    marker = tmp_path / "shadowed"
    (tmp_path / "safetensors.py").write_text(f"open({str(marker)!r}, 'w')\nraise ImportError('shadow')\n")
    (tmp_path / "cwdnet.py").write_text("from service_models import tiny as build\n")
    torch.manual_seed(0)
    save_file(service_models.tiny().state_dict(), tmp_path / "tiny.safetensors")
    server_p = (sys.executable, "-P", "-m", "server")  # as `convert serve` starts: not the folder first itself
    with running_server(tmp_path / "data", *FACTORIES, "--allow-factory", "cwdnet:*", program=server_p) as server:
        with ConvertClient(server.address) as client:
            weighted = JobOptions("service_models:tiny", str(tmp_path / "tiny.safetensors"), SHAPE)
            from_cwd = JobOptions("cwdnet:build", input_shapes=SHAPE, config=ConvertConfig(rank="full"))
            for options in (weighted, from_cwd):  # safetensors is the installed one; cwdnet is still found
                job = wait_for(client, client.submit(options), pb.SUCCEEDED, pb.FAILED, timeout=120)
                assert job.state == pb.SUCCEEDED, job.message
    assert not marker.exists()


@NEEDS_BWRAP
def test_folders_under_tmp_stay_readable_in_the_sandbox_and_its_tmp_writable(tmp_path: Path) -> None:
    """A virtualenv, a checkout or a factories folder under /tmp (CI clones there) must not vanish under the
    sandbox's own empty /tmp."""
    from server.sandbox import find_sandbox

    (tmp_path / "factories").mkdir()
    (tmp_path / "factories" / "probe_module.py").write_text("ANSWER = 42\n")
    sandbox, why = find_sandbox(readable=[tmp_path / "factories"])
    assert sandbox is not None, why
    code = (
        f"import sys; sys.path.insert(0, {str(tmp_path / 'factories')!r}); import probe_module; "
        "open('/tmp/scratch', 'w').write('x'); print(probe_module.ANSWER)"
    )
    command = sandbox.command([sys.executable, "-P", "-c", code], tmp_path, {})
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.strip() == "42", result.stderr
