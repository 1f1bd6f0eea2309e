"""The processes of a run: torchrun's process group, DDP, what the processes agree on, each step's batch, and
each process's settings for the run (deterministic cuDNN, Ctrl-C as a request to stop).

Under torchrun (WORLD_SIZE > 1) every process takes its share of each batch and DDP averages the gradients,
which is the gradient of the whole batch: a run gives the same weights on any number of processes (BatchNorm in
"update" mode aside: its batch statistics are per process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler, Subset

from convert.distill.datasets import Sample, stream_seed

__all__ = [
    "Processes",
    "StepBatches",
    "deterministic",
    "is_launched",
    "is_main_process",
    "process_group",
    "stop_on_sigint",
]


def is_launched() -> bool:
    """Whether this process is one of several that a launcher started (torchrun, or a Ray Train worker)."""
    return dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """False in the processes of a torchrun launch other than rank 0 (which writes the results)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place in the run, and how the processes agree."""

    rank: int
    world: int  # processes in the run
    device: torch.device  # this process's device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: wrapped in DDP with more than one process (gradients averaged over them)."""
        if self.world == 1:
            return model
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def share(self, dataset: Dataset[Sample]) -> Dataset[Sample]:
        """This process's share of `dataset` (every world-th item)."""
        return Subset(dataset, range(self.rank, len(dataset), self.world))

    def any(self, flag: bool) -> bool:
        """Whether any process says so: every process stops at the same step."""
        if self.world == 1:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(value)
        return bool(value > 0)

    def mean(self, value: torch.Tensor) -> float:
        """`value` averaged over the processes: every process sees the same (and stops alike on a NaN)."""
        value = value.detach().float()
        if self.world > 1:
            dist.all_reduce(value)
            value = value / self.world
        return float(value)

    def sum(self, sums: torch.Tensor) -> torch.Tensor:
        """`sums` added up over the processes, in place."""
        if self.world > 1:
            dist.all_reduce(sums)
        return sums


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Processes]:
    """This process's place: joins torchrun's process group when WORLD_SIZE > 1 (gloo on the CPU, NCCL on CUDA,
    where each process takes the GPU cuda:LOCAL_RANK), and leaves the group it joined."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        yield Processes(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if created:
            dist.destroy_process_group()


class StepBatches(Sampler[list[int]]):
    """Indices of the batches of steps start..total-1, this process's share of each.

    The inputs are read in epochs of a permutation seeded by (seed, epoch), back to back (a batch may span two
    epochs), so the batch of a step is the same on every run and after a resume. Synthetic inputs (size None)
    are all different: index = position in the stream.
    """

    def __init__(self, size: int | None, batch: int, start: int, total: int, seed: int, processes: Processes):
        self.size, self.batch, self.start, self.total, self.seed = size, batch, start, total, seed
        self.rank, self.world = processes.rank, processes.world
        self._epoch, self._order = -1, []

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.total):
            positions = range(step * self.batch, (step + 1) * self.batch)
            yield [self._index(p) for p in positions][self.rank :: self.world]

    def _index(self, position: int) -> int:
        if self.size is None:
            return position
        epoch = position // self.size
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._order[position % self.size]


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN's deterministic algorithms while training on CUDA (the CPU kernels are deterministic)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[Callable[[], bool]]:
    """Yield 'was Ctrl-C pressed': the first SIGINT asks the loop to stop at the end of the step; a second one
    raises KeyboardInterrupt at once. Only the main thread receives signals: elsewhere this never fires."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed = False

    def handler(_signum: int, _frame: Any) -> None:
        nonlocal pressed
        if pressed:
            raise KeyboardInterrupt
        pressed = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: pressed
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
