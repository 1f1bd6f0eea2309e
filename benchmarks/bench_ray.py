"""The Ray runner against the local pool: the per-job overhead of a job run as a Ray task, and 16 small jobs at once
on a cluster of 1 node and of 2 nodes.

    .venv/bin/python benchmarks/bench_ray.py [--jobs 8] [--burst 16] [--node-cpus 2]

Starts its own servers (`python -m server`, tests/servers.py) on free loopback ports, and its own Ray clusters
(`ray.cluster_utils.Cluster`, real raylets on this machine, on loopback).
- Per job: `service_models:tiny` (two tiny convs, the smallest real job) submitted and awaited one at a time
  (`ConvertClient.run`: submit, watch, download), after one warm-up job; the local pool has 1 worker started ahead,
  the Ray runner 1 node; timed from the call to the files in OUTDIR.
- Burst: `--burst` of those jobs submitted at once (`--workers` as many), timed from the first submit to the last job
  finished, on 1 node of `--node-cpus` CPUs and on 2 such nodes (logical CPUs: on one machine they share its cores).
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import FACTORIES, ROOT, TESTS, running_server

from convert import ConvertConfig
from convert.job import JobOptions
from server.client import ConvertClient
from server.rpc import converter_pb2 as pb

TINY = JobOptions("service_models:tiny", input_shapes=((1, 3, 16, 16),), config=ConvertConfig(rank="full"))


def per_job_seconds(address: str, folder: Path, jobs: int) -> list[float]:
    """Seconds of each of `jobs` jobs run one after another, after a warm-up one."""
    with ConvertClient(address) as client:
        client.run(TINY, folder / "warm-up")
        seconds = []
        for index in range(jobs):
            start = time.perf_counter()
            client.run(TINY, folder / f"job-{index}")
            seconds.append(time.perf_counter() - start)
    return seconds


def burst_seconds(address: str, jobs: int, folder: Path) -> float:
    """Seconds from the first of `jobs` submits to the last job finished (all must succeed)."""
    with ConvertClient(address) as client:
        client.run(TINY, folder / "warm-up")
        start = time.perf_counter()
        ids = [client.submit(TINY) for _ in range(jobs)]
        for job_id in ids:
            for event in client.watch(job_id):
                final = event.state
            assert final == pb.SUCCEEDED, client.get(job_id).message
        return time.perf_counter() - start


def on_cluster(nodes: int, node_cpus: int, data: Path, workers: int, measure):
    """`measure(address)` against a server with `--runner ray` on a fresh cluster of `nodes` nodes."""
    from ray.cluster_utils import Cluster  # after main() has set the environment Ray reads at import

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=node_cpus)
    cluster.wait_for_nodes()
    try:
        options = ["--runner", "ray", "--ray-address", cluster.address, "--workers", str(workers), *FACTORIES]
        with running_server(data, *options) as server:
            return measure(server.address)
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="timed jobs, one at a time (default: 8)")
    parser.add_argument("--burst", type=int, default=16, help="jobs submitted at once (default: 16)")
    parser.add_argument("--node-cpus", type=int, default=2, help="logical CPUs of each Ray node (default: 2)")
    args = parser.parse_args()
    # The nodes (and the jobs' workers) inherit this: loopback only (read when Ray is imported), the test factories.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    import ray

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, ray {ray.__version__}, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with running_server(folder / "local", "--workers", "1", *FACTORIES) as server:
            local = per_job_seconds(server.address, folder / "local-out", args.jobs)
        remote = on_cluster(
            1, args.node_cpus, folder / "ray", 1, lambda a: per_job_seconds(a, folder / "ray-out", args.jobs)
        )
        print(f"\n## One job at a time ({args.jobs} jobs of service_models:tiny, after a warm-up)\n")
        print("| runner | median s | min s | max s |")
        print("|---|---|---|---|")
        for name, seconds in (("local (1 worker)", local), ("ray (1 node)", remote)):
            print(f"| {name} | {statistics.median(seconds):.2f} | {min(seconds):.2f} | {max(seconds):.2f} |")
        overhead = statistics.median(remote) - statistics.median(local)
        print(f"\nRay's overhead per job: {overhead:+.2f} s (median against median)")

        print(f"\n## {args.burst} jobs at once, nodes of {args.node_cpus} logical CPUs\n")
        print("| nodes | seconds | jobs/s |")
        print("|---|---|---|")
        for nodes in (1, 2):
            seconds = on_cluster(
                nodes,
                args.node_cpus,
                folder / f"burst-{nodes}",
                args.burst,
                lambda a, n=nodes: burst_seconds(a, args.burst, folder / f"burst-{n}-out"),
            )
            print(f"| {nodes} | {seconds:.1f} | {args.burst / seconds:.2f} |")


if __name__ == "__main__":
    main()
