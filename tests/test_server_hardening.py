"""The service's defences that need no worker, in-process: call bounds, the server's options (auth, exposure),
the client against a hostile server (artifact names and sizes), messages under gRPC's limit, option caps, text
from workers, and tensor files checked from their headers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from servers import SERVER, launch

from convert import BenchConfig, ConvertConfig, ConvertError, DistillConfig
from convert.files import check_tensor_budget, declared_tensor_bytes
from convert.job import DistillJob, JobOptions
from server import wire
from server.caps import check_caps
from server.cli import main as serve_main
from server.client import ConvertClient, ServiceError
from server.config import ServerConfig
from server.limits import CallLimits, TooMany, client_host
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc
from server.service import warnings_of
from server.store import JobRecord
from server.uploads import MAX_CHUNK
from server.worker.protocol import Failed, LogLine, decode

# --- call bounds ----------------------------------------------------------------------------------------------------


def test_call_bounds_in_all_and_per_client() -> None:
    limits = CallLimits({"watch": 3, "upload": 1}, per_client=2)
    with contextlib.ExitStack() as held:
        held.enter_context(limits.slot("watch", "10.0.0.1"))
        held.enter_context(limits.slot("watch", "10.0.0.1"))
        with pytest.raises(TooMany, match=r"this client \(10.0.0.1\) has 2 watches open"):
            held.enter_context(limits.slot("watch", "10.0.0.1"))
        held.enter_context(limits.slot("watch", "10.0.0.2"))
        with pytest.raises(TooMany, match="the server has 3 watches open, its limit"):
            held.enter_context(limits.slot("watch", "10.0.0.3"))
        held.enter_context(limits.slot("upload", "10.0.0.1"))  # each kind has its own bound
        assert limits.open("watch") == 3
    assert limits.open("watch") == limits.open("upload") == 0  # every slot given back


def test_client_host_of_a_peer() -> None:
    assert client_host("ipv4:127.0.0.1:50000") == "127.0.0.1"
    assert client_host("ipv6:[::1]:50000") == "::1"
    assert client_host("unix:/tmp/socket") == "unix:/tmp/socket"


# --- the server's options: auth and exposure ----------------------------------------------------------------------


def test_auth_and_exposure_options(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="the auth token is empty"):
        ServerConfig(tmp_path, auth_token="  ")
    with pytest.raises(ConvertError, match="--host 0.0.0.0 listens beyond this machine, and without a token"):
        ServerConfig(tmp_path, host="0.0.0.0")
    open_config = ServerConfig(tmp_path, host="0.0.0.0", insecure_no_auth=True)
    assert warnings_of(open_config, sandboxed=False) == [
        "no auth on 0.0.0.0 (--insecure-no-auth): anyone who reaches the port can use the server"
    ]
    plaintext = ServerConfig(tmp_path, host="0.0.0.0", auth_token="t")
    assert "the token travels in plaintext" in warnings_of(plaintext, sandboxed=False)[0]
    assert warnings_of(ServerConfig(tmp_path, auth_token="t"), sandboxed=False) == []  # loopback
    with pytest.raises(ConvertError, match="--trust-uploaded-code goes with --allow-untrusted-code"):
        ServerConfig(tmp_path, trust_uploaded_code=True)
    with pytest.raises(ConvertError, match="leave no room for the other calls"):
        ServerConfig(tmp_path, max_rpcs=8, max_watches=6, max_uploads=2)
    assert ServerConfig(tmp_path, port=6000).health_port == 6001 and ServerConfig(tmp_path, port=0).health_port == 0


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--auth-token", ""], {}, "the auth token is empty"),
        ([], {"CONVERT_AUTH_TOKEN": ""}, "the auth token is empty"),
        (["--host", "0.0.0.0"], {}, "without a token anyone who reaches it"),
        (["--auth-token-file", "missing"], {}, "cannot read --auth-token-file missing"),
    ],
)
def test_bad_server_options_exit_2_in_one_line(tmp_path, monkeypatch, capsys, argv, env, expected) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CONVERT_AUTH_TOKEN", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert serve_main(["--data-dir", str(tmp_path / "data"), "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "data").exists()  # refused before anything is written


@pytest.mark.slow
def test_a_token_from_a_file_and_the_startup_line(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    server = launch([*SERVER_ARGS, "--data-dir", str(tmp_path / "data"), "--auth-token-file", str(token)], tmp_path)
    try:
        line = server.log.read_text()
        assert "auth: token; TLS: off; sandbox: off" in line and "s3cret" not in line
        with ConvertClient(server.address) as client, pytest.raises(ServiceError) as error:
            client.list()
        assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
        with ConvertClient(server.address, auth_token="s3cret") as client:
            assert client.list() == []
    finally:
        server.stop()


SERVER_ARGS = (*SERVER, "--port", "0", "--grace", "0")


# --- the client against a hostile server ----------------------------------------------------------------------------


class Hostile(pb_grpc.ConverterServicer):
    """A server that lists `artifacts` and serves `chunks` for any of them (counting what it sent)."""

    def __init__(self, artifacts: list[pb.Artifact], chunks: Iterator[bytes] | None = None, **job) -> None:
        self.artifacts, self.chunks, self.job, self.sent = artifacts, chunks, job, 0

    def GetJob(self, request, context):
        return pb.Job(id=request.job_id, state=pb.SUCCEEDED, artifacts=self.artifacts, **self.job)

    def Download(self, request, context):
        for chunk in self.chunks or iter([b"x"]):
            self.sent += 1
            yield pb.DownloadChunk(data=chunk)


@contextlib.contextmanager
def serving(servicer: Hostile) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_ConverterServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


JOB = "a" * 32
BAD_NAMES = ["../x", "/tmp/absolute", "a/b", "..", ".", "", "x\x00y", "back\\slash", "line\nbreak", "n" * 300]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_download_takes_plain_file_names_only(tmp_path: Path, name: str) -> None:
    artifact = pb.Artifact(name=name, size_bytes=1, sha256="0" * 64)
    with serving(Hostile([artifact])) as address, ConvertClient(address) as client:
        with pytest.raises(ConvertError, match="not a plain file name"):
            client.download(JOB, tmp_path / "out" / "deep")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_download_of_a_name_twice_is_refused(tmp_path: Path) -> None:
    artifact = pb.Artifact(name="model.pt", size_bytes=1, sha256="0" * 64)
    with serving(Hostile([artifact, artifact])) as address, ConvertClient(address) as client:
        with pytest.raises(ConvertError, match="comes twice"):
            client.download(JOB, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_stops_past_the_declared_size(tmp_path: Path) -> None:
    endless = iter(lambda: b"\0" * (64 << 10), None)
    hostile = Hostile([pb.Artifact(name="model.pt", size_bytes=100_000, sha256="0" * 64)], endless)
    with serving(hostile) as address, ConvertClient(address) as client:
        with pytest.raises(ConvertError, match="more of model.pt than the 100000 bytes it declared"):
            client.download(JOB, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert hostile.sent < 64  # stopped, not drained


def test_a_large_report_travels_as_an_artifact(tmp_path: Path, monkeypatch) -> None:
    report = {"layers": [{"name": f"layer{i}", "reason": "x" * 200} for i in range(4000)]}
    text = json.dumps(report)
    record = JobRecord(JOB, "SUCCEEDED", "done", 1.0, "", "", 0, 0, 0, "m", {"model": "m"}, text, [])
    message = wire.job_message(record, with_report=True)
    assert message.report_as_artifact and not message.report_json and message.ByteSize() < MAX_CHUNK
    small = wire.job_message(record.__class__(**{**record.__dict__, "report": "{}"}), with_report=True)
    assert small.report_json == "{}" and not small.report_as_artifact
    data = text.encode()
    artifact = pb.Artifact(name="report.json", size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    chunks = iter([data[i : i + MAX_CHUNK] for i in range(0, len(data), MAX_CHUNK)])
    monkeypatch.setattr(wire, "report_of", lambda job, text=None: text)  # the text the client would parse
    with serving(Hostile([artifact], chunks, report_as_artifact=True)) as address, ConvertClient(address) as client:
        assert client.report(JOB) == text


# --- option caps, worker text ---------------------------------------------------------------------------------------


def test_options_over_the_caps_are_refused_at_submit() -> None:
    check_caps(JobOptions("m", input_shapes=((1, 3, 224, 224),), bench=BenchConfig(runs=100)))
    cases = [
        (JobOptions("m", bench=BenchConfig(runs=10**9)), "`runs` 1e+09 (at most 100000 runs)"),
        (JobOptions("m", bench=BenchConfig(duration=1e6)), "`duration` 1e+06 (at most 600 seconds)"),
        (JobOptions("m", bench=BenchConfig(batch_sizes=(1, 10**6))), "`batch_sizes` [1, 1000000]"),
        (JobOptions("m", input_shapes=((1 << 20, 1 << 20),)), "`input_shapes` 1048576x1048576"),
        (JobOptions("m", input_shapes=((1, 2),) * 17), "17 `input_shapes` (at most 16 inputs)"),
        (JobOptions("m", distill=DistillJob(("synthetic",), DistillConfig(steps=10**8))), "`steps` 1e+08"),
    ]
    for options, expected in cases:
        with pytest.raises(ConvertError) as error:
            check_caps(options)
        assert expected in str(error.value), str(error.value)
    with pytest.raises(ConvertError, match="`include` '\\(' is not a valid regular expression"):
        check_caps(JobOptions("m", config=ConvertConfig(include="(")))


def test_text_from_workers_loses_terminal_escapes() -> None:
    line = json.dumps({"event": "failed", "failure": "WORKER", "message": "\x1b[31mred\x1b[0m\x1b]0;title\x07\a!\nx"})
    assert decode(line) == Failed("WORKER", "red! x")
    assert LogLine("a\x1b[2Jb\x9bc").line == "abc"


# --- tensor files, from their headers -------------------------------------------------------------------------------


def test_tensor_files_are_sized_from_their_headers(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((1000, 1000), np.float32))  # 4 MB in 4 KB
    assert declared_tensor_bytes(tmp_path / "zeros.npz") == 4_000_000
    with pytest.raises(ConvertError, match="zeros.npz holds 4 MiB of tensors once loaded, more than the 1 MiB"):
        check_tensor_budget(tmp_path / "zeros.npz", budget=1 << 20)
    header = io.BytesIO()  # a forged member: its header declares 4 GiB, it holds a few bytes
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 30,)})
    with zipfile.ZipFile(tmp_path / "forged.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", header.getvalue())
    with pytest.raises(ConvertError, match="forged.npz/x.npy declares a 1073741824 array of 4294967296 bytes"):
        declared_tensor_bytes(tmp_path / "forged.npz")
    np.save(tmp_path / "small.npy", np.ones((4, 3), np.float64))
    assert declared_tensor_bytes(tmp_path / "small.npy") == 96
