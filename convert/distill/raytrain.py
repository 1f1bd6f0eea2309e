"""Distillation over several processes with Ray Train: a TorchTrainer whose workers each run `distill_result`,
the training of one process or of torchrun's (`convert.distill.parallel`: DDP, each its share of every batch;
gloo on the CPU, NCCL on CUDA), on the Ray cluster this process can reach. Rank 0 sends its events and its result
back through a Ray queue.

Reference: https://docs.ray.io/en/latest/train/getting-started-pytorch.html
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
from typing import Any

from torch import nn

from convert.conversion import Conversion
from convert.distill.config import DistillConfig, DistillEvent, DistillProgress
from convert.distill.data import DistillData
from convert.errors import ConvertError, one_line
from convert.report.schema import Report
from convert.runtime.devices import resolve_device

__all__ = ["distill_on_ray"]

_POLL = 0.5  # seconds between looks at the queue of rank 0's events


@dataclasses.dataclass
class _Done:
    """Rank 0's result: what `distill_result` changes in a Conversion."""

    model: nn.Module
    report: Report
    checkpoint: dict[str, Any] | None


@dataclasses.dataclass
class _Refused:
    """Rank 0's ConvertError (e.g. a batch size that the processes cannot share), to raise here."""

    message: str


def distill_on_ray(
    result: Conversion,
    teacher: nn.Module,
    data: DistillData,
    config: DistillConfig,
    progress: DistillProgress,
    checkpoint: dict[str, Any] | None,
) -> Conversion:
    """`distill_result` over `config.processes` Ray Train workers (a GPU each when training on CUDA).

    Joins the Ray cluster at RAY_ADDRESS, else the local one, unless this process is connected already. A
    KeyboardInterrupt raised by `progress` is not passed on to the workers: the run goes to its end.

    Raises:
        ConvertError: when Ray is not installed or no cluster is reachable, and what rank 0's `distill_result`
            refuses.
    """
    try:
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.util.queue import Empty, Queue
    except ImportError as e:
        raise ConvertError(
            f"`processes`={config.processes} trains with Ray Train, which is not installed ({e}): pip install "
            "'convert[ray]', or launch the processes with torchrun and leave `processes` at 1"
        ) from e
    if not ray.is_initialized():
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as e:
            raise ConvertError(
                f"`processes`={config.processes} trains with Ray Train on a Ray cluster, and none is reachable "
                f"({one_line(e)}): start one (`ray start --head`) or set RAY_ADDRESS, run the job on a "
                "`convert serve --runner ray` server, or launch the processes with torchrun and `processes`=1"
            ) from e
    on_gpu = resolve_device(config.device).torch_device.type == "cuda"
    # Every worker trains where this process would: "auto" is resolved here, not on each worker's node.
    config = dataclasses.replace(config, device="cuda" if on_gpu else "cpu")
    events = Queue()
    storage = tempfile.mkdtemp(prefix="convert-ray-train-")
    trainer = TorchTrainer(
        _train,
        train_loop_config={"payload": ray.put((result, teacher, data, config, checkpoint)), "events": events},
        scaling_config=ScalingConfig(num_workers=config.processes, use_gpu=on_gpu),
        run_config=RunConfig(name="distill", storage_path=storage, failure_config=FailureConfig(max_failures=0)),
    )
    failure: list[BaseException] = []
    fit = threading.Thread(target=_fit, args=(trainer, failure), name="ray-train", daemon=True)
    fit.start()
    outcome: _Done | _Refused | None = None
    try:
        while fit.is_alive() or not events.empty():
            try:
                item = events.get(timeout=_POLL)
            except Empty:
                continue
            if isinstance(item, DistillEvent):
                try:
                    progress(item)
                except KeyboardInterrupt:
                    pass  # the workers train on: a stop request does not reach them
            else:
                outcome = item
        fit.join()
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if isinstance(outcome, _Refused):
        raise ConvertError(outcome.message)
    if failure or outcome is None:
        why = one_line(failure[0]) if failure else "rank 0 sent no result"
        raise RuntimeError(f"the Ray Train run failed: {why}")
    return dataclasses.replace(result, model=outcome.model, report=outcome.report, checkpoint=outcome.checkpoint)


def _fit(trainer: Any, failure: list[BaseException]) -> None:
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray Train's errors, raised in the caller's thread by distill_on_ray
        failure.append(e)


def _train(loop: dict[str, Any]) -> None:
    """One Ray Train worker: the process group is set up (RANK, WORLD_SIZE, LOCAL_RANK), `distill_result` joins it."""
    import ray
    import ray.train

    from convert.distill.trainer import distill_result

    result, teacher, data, config, checkpoint = ray.get(loop["payload"])
    events = loop["events"]
    main = ray.train.get_context().get_world_rank() == 0
    try:
        distilled = distill_result(
            result, teacher, data, config, progress=events.put if main else None, checkpoint=checkpoint
        )
    except ConvertError as e:
        if main:
            events.put(_Refused(str(e)))
        return
    if main:
        events.put(_Done(distilled.model, distilled.report, distilled.checkpoint))
