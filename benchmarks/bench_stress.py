"""The service under load on loopback: Submit latency while every Watch slot is held (and stalled uploads hold
every upload slot), and the server's memory over a run of real jobs. Targets (issue 13): Submit and the health
check answer while the watches are held; the server's RSS stays bounded over 200 jobs.

    .venv/bin/python benchmarks/bench_stress.py [--watches 32] [--submits 50] [--jobs 200] [--workers 2]

Starts its own server (`python -m server`) on a free port with a temporary data folder and the test factories.
- Held watches: `--watches` Watch streams open on a running job (the server's --max-watches, from as many client
  connections, each under --max-per-client), then `--submits` Submits of a factory without weights, each timed
  from the call to the job id, beside the same Submits with no watch open.
- Memory: the server process's RSS (psutil) after each of `--jobs` real conversions (the tests' two-conv model,
  submitted one after another, each watched to its end and fetched with GetJob).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import FACTORIES, health, running_server

from convert import ConvertConfig
from convert.job import JobOptions
from server.client import ConvertClient
from server.rpc import converter_pb2 as pb
from server.rpc import converter_pb2_grpc as pb_grpc

SHAPE = ((1, 3, 16, 16),)
TINY = JobOptions("service_models:tiny", input_shapes=SHAPE, config=ConvertConfig(rank="full"))
SLOW = JobOptions("service_models:slow", input_shapes=SHAPE)
MIB = 1 << 20


def submit_ms(client: ConvertClient, count: int) -> list[float]:
    """Milliseconds of each of `count` Submits (each job then cancelled while queued)."""
    timings = []
    for _ in range(count):
        start = time.perf_counter()
        job_id = client.submit(JobOptions("service_models:tiny", input_shapes=SHAPE))
        timings.append(1000 * (time.perf_counter() - start))
        client.cancel(job_id)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watches", type=int, default=32, help="watches held (the server's --max-watches)")
    parser.add_argument("--submits", type=int, default=50, help="timed Submits each way (default: 50)")
    parser.add_argument("--jobs", type=int, default=200, help="real jobs for the memory figure (default: 200)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, grpcio {grpc.__version__}, "
        f"python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"
    )
    options = ["--workers", str(args.workers), "--max-queued", "1000", *FACTORIES]
    options += ["--max-watches", str(args.watches), "--max-per-client", str(args.watches)]
    options += ["--max-concurrent-rpcs", str(args.watches + 24)]
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "data", *options) as server:
        with ConvertClient(server.address) as client:
            slow = client.submit(SLOW)
            while client.get(slow).state != pb.RUNNING:
                time.sleep(0.1)
            submit_ms(client, 5)  # warm-up
            free = submit_ms(client, args.submits)
            channels = [grpc.insecure_channel(server.address) for _ in range(args.watches)]
            watches = [pb_grpc.ConverterStub(c).Watch(pb.WatchRequest(job_id=slow)) for c in channels]
            for watch in watches:
                next(watch)
            refused = 0
            try:
                next(pb_grpc.ConverterStub(channels[0]).Watch(pb.WatchRequest(job_id=slow)))
            except grpc.RpcError as e:
                refused = e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            held = submit_ms(client, args.submits)
            healthy = health(server.health_address) == "SERVING" and health(server.address) == "SERVING"
            for watch in watches:
                watch.cancel()
            for channel in channels:
                channel.close()
            client.cancel(slow)
            print(f"\n## Submit while {args.watches} watches are held ({args.submits} Submits each)\n")
            print("| watches held | Submit p50 ms | p90 ms | max ms | one more watch | health (both ports) |")
            print("|---|---|---|---|---|---|")
            for count, timings in ((0, free), (args.watches, held)):
                ordered = sorted(timings)
                print(
                    f"| {count} | {statistics.median(ordered):.1f} | {ordered[int(0.9 * (len(ordered) - 1))]:.1f} "
                    f"| {ordered[-1]:.1f} | {'RESOURCE_EXHAUSTED' if refused and count else '-'} "
                    f"| {('SERVING' if healthy else 'not serving') if count else '-'} |"
                )

            process = psutil.Process(server.process.pid)
            marks = sorted({1, 10, 25, 50, 100, 150, 200, args.jobs} & set(range(1, args.jobs + 1)))
            print(f"\n## Server RSS over {args.jobs} jobs ({args.workers} workers)\n")
            print("| jobs done | server RSS MiB | seconds |")
            print("|---|---|---|", flush=True)
            start, rss = time.perf_counter(), []
            for n in range(1, args.jobs + 1):
                job = client.wait(client.submit(TINY))
                assert job.state == pb.SUCCEEDED, job.message
                rss.append(process.memory_info().rss / MIB)
                if n in marks:  # as it goes: a run cut short still tells its figures
                    print(f"| {n} | {rss[-1]:.0f} | {time.perf_counter() - start:.0f} |", flush=True)
            growth = rss[-1] - rss[min(9, len(rss) - 1)]
            print(f"\ngrowth from job {min(10, args.jobs)} to job {args.jobs}: {growth:+.1f} MiB")


if __name__ == "__main__":
    main()
