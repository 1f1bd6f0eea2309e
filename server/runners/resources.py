"""What a job takes of a Ray cluster, from its options, and whether some node of the cluster has it.

A job asks for a GPU when it benchmarks, plans or distills on CUDA (`cuda`, `tensorrt`) or names an accelerator
type; for the CPU threads its options name (else the server's `ray_cpus`); for the custom resources it names. A
distillation over several processes adds its Ray Train workers: one CPU each, and one GPU each on CUDA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from convert.job import JobOptions

__all__ = ["GPU_DEVICES", "Request", "describe_nodes", "request", "shortfall"]

GPU_DEVICES = frozenset({"cuda", "tensorrt"})  # the devices (convert.runtime.devices) that run on a GPU
_ACCELERATOR = "accelerator_type:"  # Ray's resource of each node's accelerator type, e.g. accelerator_type:H100
_EXACT = 1e-4  # Ray's resources are fixed point: amounts this close are equal


@dataclasses.dataclass(frozen=True)
class Request:
    """What one job takes: its task on one node, and its distillation's Ray Train workers (on any nodes)."""

    cpus: int  # of its node; also the threads torch uses there
    gpus: int  # of its node: 1 when it runs on a GPU
    accelerator: str | None  # the node's accelerator type (then gpus is 1)
    resources: tuple[tuple[str, float], ...]  # custom resources of its node
    trainers: int  # Ray Train workers (0: the distillation, if any, trains in the job's own task)
    trainer_gpus: bool  # whether each Ray Train worker takes a GPU

    def task_options(self) -> dict[str, Any]:
        """The options of the job's Ray task (`ray.remote(...).options(**this)`)."""
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "resources": dict(self.resources)}
        if self.accelerator is not None:
            options["accelerator_type"] = self.accelerator
        return options

    def placement(self) -> dict[str, float]:
        """What the job's task took, as its report records it (`report.Placement.resources`)."""
        taken = {"CPU": float(self.cpus), **({"GPU": float(self.gpus)} if self.gpus else {}), **dict(self.resources)}
        if self.accelerator is not None:
            taken[f"{_ACCELERATOR}{self.accelerator}"] = 1.0
        return taken

    def describe(self) -> str:
        """e.g. "CPU 4, GPU 1 (H100), edge-cpu 1, 2 Ray Train workers with a GPU and a CPU each"."""
        gpu = f", GPU {self.gpus}{f' ({self.accelerator})' if self.accelerator else ''}" if self.gpus else ""
        parts = [f"CPU {self.cpus}{gpu}", *(f"{name} {amount:g}" for name, amount in self.resources)]
        if self.trainers:
            each = "a GPU and a CPU" if self.trainer_gpus else "a CPU"
            parts.append(f"{self.trainers} Ray Train workers with {each} each")
        return ", ".join(parts)


def request(options: JobOptions, default_cpus: int) -> Request:
    """What the job of `options` takes.

    Args:
        options: the job's options.
        default_cpus: the CPUs of a job whose options name no thread count.
    """
    bench, auto, distill = options.bench, options.auto, options.distill
    threads = [t for t in (bench and bench.threads, auto and auto.threads) if t]
    processes = distill.config.processes if distill is not None else 1
    trains_on_gpu = distill is not None and distill.config.device in GPU_DEVICES
    on_gpu = (
        options.accelerator is not None
        or any(part is not None and part.device in GPU_DEVICES for part in (bench, auto))
        or (trains_on_gpu and processes == 1)
    )
    return Request(
        cpus=max(threads, default=default_cpus),
        gpus=int(on_gpu),
        accelerator=options.accelerator,
        resources=options.resources,
        trainers=processes if processes > 1 else 0,
        trainer_gpus=trains_on_gpu,
    )


def shortfall(job: Request, nodes: Sequence[Mapping[str, float]]) -> str | None:
    """Why no node of a cluster with `nodes` (each node's total resources, as `ray.nodes()` gives them) can ever
    run `job`; None when one can."""
    if not nodes:
        return "the Ray cluster has no node alive"
    needs = {"CPU": job.cpus, "GPU": job.gpus, **dict(job.resources)}
    if job.accelerator is not None:
        needs[f"{_ACCELERATOR}{job.accelerator}"] = _EXACT  # Ray asks for a sliver of the accelerator's resource
    fits = [node for node in nodes if all(node.get(name, 0.0) + _EXACT >= amount for name, amount in needs.items())]
    if not fits:
        return f"no node has what the job's task takes ({job.describe()})"
    if job.trainers:
        total = {name: sum(node.get(name, 0.0) for node in nodes) for name in ("CPU", "GPU")}
        cpus, gpus = job.cpus + job.trainers, job.gpus + (job.trainers if job.trainer_gpus else 0)
        if total["CPU"] + _EXACT < cpus or total["GPU"] + _EXACT < gpus:
            return (
                f"the nodes together have {total['CPU']:g} CPUs and {total['GPU']:g} GPUs, and the job takes {cpus} "
                f"and {gpus} with its Ray Train workers ({job.describe()})"
            )
    return None


def describe_nodes(nodes: Sequence[Mapping[str, float]]) -> str:
    """The cluster's nodes as a person reads them: "2 nodes: CPU 2, GPU 1 (A10G); CPU 2, edge-cpu 1"."""
    described = sorted(_node(node) for node in nodes)  # in a stable order: Ray lists its nodes in any
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}: " + "; ".join(described)


def _node(resources: Mapping[str, float]) -> str:
    accelerators = [name.removeprefix(_ACCELERATOR) for name in resources if name.startswith(_ACCELERATOR)]
    gpu = resources.get("GPU", 0.0)
    parts = [f"CPU {resources.get('CPU', 0.0):g}"]
    if gpu or accelerators:
        parts.append(f"GPU {gpu:g}" + (f" ({', '.join(accelerators)})" if accelerators else ""))
    internal = ("CPU", "GPU", "memory", "object_store_memory")
    custom = sorted(name for name in resources if name not in internal and not name.startswith((_ACCELERATOR, "node:")))
    return ", ".join(parts + [f"{name} {resources[name]:g}" for name in custom])
