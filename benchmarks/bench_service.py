"""The gRPC service on loopback: upload throughput, submit latency under 16 concurrent clients, and the server's
memory during a 2 GB upload. Targets (issue 5): upload >= 200 MB/s; a 2 GB upload raises the server's RSS by
less than 100 MB.

    .venv/bin/python benchmarks/bench_service.py [--upload-mb 512] [--repeats 3] [--clients 16] [--submits 20]

Starts its own server (`python -m server`, 1 worker) on a free port with a temporary data folder.
- Upload: `ConvertClient.submit` of a file as a factory's weights (1 MiB chunks, written to disk by the server),
  with the sha256 checked by the server (its computation on the client is not timed), alternated with the same
  upload without a sha256; timed from the first byte to the job id (the job then fails at once in the worker:
  the file fits no model).
- Submit latency: each client submits real jobs (resnet18's factory, no weights: the smallest submission) one
  after another, timed from the call to the job id; the worker converts them meanwhile.
- Memory: the server process's RSS (psutil), sampled every 20 ms during a generated 2 GiB upload.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import running_server

from convert.job import JobOptions
from server.client import ConvertClient
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc

MB = 1e6
MIB = 1 << 20


def upload_seconds(client: ConvertClient, path: Path, sha256: str | bool) -> float:
    """Seconds from the first byte sent to the job id."""
    options = JobOptions("torchvision.models:resnet18", str(path), ((1, 3, 64, 64),))
    start = time.perf_counter()
    client.submit(options, sha256=sha256)
    return time.perf_counter() - start


def make_file(folder: Path, size_mb: int) -> tuple[Path, str]:
    """A `size_mb` MiB .safetensors file with an empty header and random bytes after it (a repeated random MiB):
    accepted as weights, and refused by the worker at once (it fits no model)."""
    path = folder / "blob.safetensors"
    block = (2).to_bytes(8, "little") + b"{}" + os.urandom(MIB - 10)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(block)
            digest.update(block)
    return path, digest.hexdigest()


def submit_latencies(address: str, clients: int, submits: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)
    options = JobOptions("torchvision.models:resnet18", input_shapes=((1, 3, 64, 64),))

    def one_client() -> None:
        with ConvertClient(address) as client:
            client.list(limit=1)  # connect before the clock starts
            barrier.wait()
            for _ in range(submits):
                start = time.perf_counter()
                client.submit(options)
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=one_client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def rss_during_upload(address: str, pid: int, size: int) -> tuple[int, int, float]:
    """(RSS before, peak RSS during, seconds) for a generated upload of `size` bytes as a factory's weights."""
    process = psutil.Process(pid)
    before = process.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.02)

    block = os.urandom(MIB)
    header = pb.SubmitHeader(
        options=pb.JobOptions(input_shapes=[pb.Shape(dims=[1, 3, 64, 64])]),
        factory=pb.Factory(spec="torchvision.models:resnet18", weights_format=pb.Factory.SAFETENSORS),
        size_bytes=size,
    )

    def requests():
        yield pb.SubmitRequest(header=header)
        for _ in range(size // MIB):
            yield pb.SubmitRequest(chunk=block)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.ConverterStub(channel).Submit(requests())
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return before, peak, seconds


def percentile(values: list[float], p: float) -> float:
    """Nearest rank: the smallest value that at least p% of the values do not exceed."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * p // 100) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upload-mb", type=int, default=512, help="MiB per timed upload (default: 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed uploads of each kind (default: 3)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--submits", type=int, default=20, help="submits per client (default: 20)")
    parser.add_argument("--big-mb", type=int, default=2048, help="MiB of the memory test's upload (default: 2048)")
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, grpcio {grpc.__version__}, "
        f"python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        limit = str(max(args.upload_mb, args.big_mb) + 16)
        options = ["--max-upload-mb", limit, "--max-queued", str(args.clients * args.submits + 16)]
        with running_server(folder / "data", *options) as server:
            path, digest = make_file(folder, args.upload_mb)
            with ConvertClient(server.address) as client:
                upload_seconds(client, path, digest)  # warm-up: page cache, connection
                timed = {True: [], False: []}
                for _ in range(args.repeats):
                    for sha in (True, False):  # alternate, so that drift hits both alike
                        timed[sha].append(upload_seconds(client, path, digest if sha else False))
            path.unlink()
            print("\n## Upload throughput (loopback, 1 MiB chunks, written to disk by the server)\n")
            print("| upload | size | median s | median MB/s | best MB/s |")
            print("|---|---|---|---|---|")
            for sha, label in ((True, "with sha256 checked"), (False, "without sha256")):
                median = statistics.median(timed[sha])
                size = args.upload_mb * MIB
                print(
                    f"| {label} | {args.upload_mb} MiB | {median:.2f} | {size / median / MB:.0f} "
                    f"| {size / min(timed[sha]) / MB:.0f} |"
                )

            latencies = submit_latencies(server.address, args.clients, args.submits)
            ms = [1000 * s for s in latencies]
            print(f"\n## Submit latency ({args.clients} concurrent clients x {args.submits} submits, 1 worker busy)\n")
            print("| submits | p50 ms | p90 ms | p99 ms | max ms |")
            print("|---|---|---|---|---|")
            print(
                f"| {len(ms)} | {percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} | {percentile(ms, 99):.1f} "
                f"| {max(ms):.1f} |"
            )
            with ConvertClient(server.address) as client:
                for job in client.list(states=[pb.QUEUED, pb.RUNNING], limit=1000):
                    client.cancel(job.id)

            before, peak, seconds = rss_during_upload(server.address, server.process.pid, args.big_mb * MIB)
            print(f"\n## Server memory during a {args.big_mb} MiB upload\n")
            print("| RSS before MiB | peak RSS during MiB | growth MiB | upload s | MB/s |")
            print("|---|---|---|---|---|")
            print(
                f"| {before / MIB:.0f} | {peak / MIB:.0f} | {(peak - before) / MIB:.1f} | {seconds:.1f} "
                f"| {args.big_mb * MIB / seconds / MB:.0f} |"
            )


if __name__ == "__main__":
    main()
