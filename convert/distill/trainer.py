"""Distillation: fine-tune the converted model (student) to match the original (teacher) on unlabeled inputs.

Loss = output loss + feature_weight * feature loss (`convert.distill.losses`), the features read with forward
hooks at each converted layer (`convert.distill.features`). AdamW with linear warm-up then cosine decay. The
run's state is a RunState, which is also its checkpoint (`convert.distill.state`); under torchrun the student is
wrapped in DDP and every process takes its share of each batch (`convert.distill.parallel`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from convert.conversion import Conversion
from convert.distill.config import (
    EVALUATIONS,
    DistillConfig,
    DistillEvent,
    DistillProgress,
    autocast_dtype,
    total_steps,
)
from convert.distill.data import DistillData
from convert.distill.datasets import Batch, Sample, collate, to_device
from convert.distill.features import FeatureHooks, feature_sites
from convert.distill.losses import Scales, feature_loss, float_leaves, output_loss, output_loss_kinds
from convert.distill.parallel import (
    Processes,
    StepBatches,
    deterministic,
    is_launched,
    process_group,
    stop_on_sigint,
)
from convert.distill.raytrain import distill_on_ray
from convert.distill.state import RunState, Snapshot, load_checkpoint
from convert.distill.summary import Ending, RunFacts, Seconds, distill_report
from convert.errors import ConvertError
from convert.report.schema import DistillMetrics
from convert.runtime.devices import resolve_device

__all__ = ["check_distill_options", "distill_result", "learning_rate"]

_BATCHNORM = nn.modules.batchnorm._BatchNorm  # noqa: SLF001 - torch's one base of every BatchNorm module


def distill_result(
    result: Conversion,
    teacher: nn.Module,
    data: DistillData,
    config: DistillConfig | None = None,
    *,
    progress: DistillProgress | None = None,
    checkpoint: str | os.PathLike[str] | dict[str, Any] | None = None,
) -> Conversion:
    """Fine-tune the converted model of `result` to match `teacher` (the model it was converted from).

    Neither `result` nor `teacher` is changed. A Ctrl-C (SIGINT, in the main thread) or a KeyboardInterrupt
    raised by `progress` stops at the end of the step and keeps the best weights so far; a second Ctrl-C
    interrupts at once (the KeyboardInterrupt propagates). A loss that is not finite stops the run and keeps
    the last weights whose loss was finite. Under torchrun (WORLD_SIZE > 1) it joins the process group
    (gloo on the CPU, NCCL on CUDA) and trains with DDP; with `config.processes` > 1 elsewhere, Ray Train starts
    that many processes on the Ray cluster this process can reach, each of which does the same
    (`convert.distill.raytrain`).

    Args:
        result: from `convert_model`; its report names the converted layers.
        teacher: the original model.
        data: from `load_data`.
        config: training options; defaults to DistillConfig().
        progress: called with a DistillEvent at the start, after every step and validation, and at the end.
        checkpoint: a checkpoint (or its file, e.g. OUTDIR/distill-checkpoint.pt) to resume from.

    Returns:
        A new Conversion: the student with the weights kept, `report.distill` set, and the `checkpoint`
        that `save_result` writes for a later resume.

    Raises:
        ConvertError: for options that cannot run here, and a checkpoint that does not fit.
    """
    config = config or DistillConfig()
    notify = progress or (lambda _event: None)
    saved = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    total, device, amp = _plan(config, data)
    if config.processes > 1 and not is_launched():  # Ray Train starts the processes, each of which comes here
        return distill_on_ray(result, teacher, data, config, notify, saved)
    with (
        process_group(device) as processes,
        deterministic(processes.device),
        torch.random.fork_rng(devices=[]),  # the caller's random state is left as it was
        stop_on_sigint() as sigint,
    ):
        world = processes.world
        if config.processes > 1 and world != config.processes:
            raise ConvertError(
                f"`processes`={config.processes}, but the launch started {world}: leave `processes` at 1 under "
                "torchrun (its processes train), or give the number it starts"
            )
        if config.batch_size % world or data.val_size < world:
            raise ConvertError(
                f"{world} processes need a batch size divisible by {world} (not {config.batch_size}) and at "
                f"least {world} validation inputs (not {data.val_size})"
            )
        return _Trainer(result, teacher, data, config, total, amp, processes, saved).train(notify, sigint)


def check_distill_options(config: DistillConfig, data: DistillData) -> None:
    """Everything `distill_result` would refuse about `config` and `data` before training: call it before
    converting, so that a bad option costs nothing.

    Raises:
        ConvertError: for a device or autocast that cannot run here, or epochs of synthetic inputs.
    """
    _plan(config, data)


def _plan(config: DistillConfig, data: DistillData) -> tuple[int, torch.device, torch.dtype | None]:
    """(steps, device, autocast dtype) of a run."""
    device = resolve_device(config.device).torch_device
    return total_steps(config, data), device, autocast_dtype(config.amp, device)


def learning_rate(step: int, total: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay towards 0 at `total`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Stop(NamedTuple):
    """Why the steps stopped; for "nan", at which step (0-based) and with what loss."""

    status: Literal["completed", "interrupted", "nan"]
    step: int | None = None
    loss: float | None = None


class _Trainer:
    """One distillation: the two models with their hooks, the data, and the RunState that the steps advance."""

    def __init__(
        self,
        result: Conversion,
        teacher: nn.Module,
        data: DistillData,
        config: DistillConfig,
        total: int,
        amp: torch.dtype | None,
        processes: Processes,
        saved: dict[str, Any] | None,
    ) -> None:
        self.result, self.data, self.config, self.total = result, data, config, total
        self.amp, self.processes, self.device = amp, processes, processes.device
        torch.manual_seed(config.seed)
        example = collate([data.val[0]])
        student = copy.deepcopy(result.model)
        sites = feature_sites(result, student, teacher, example)
        self.names = sites.names
        self.teacher = sites.teacher.to(self.device).eval().requires_grad_(False)
        student.to(self.device)
        self.student_features, self.teacher_features = FeatureHooks(sites.student), FeatureHooks(sites.ref)
        self.params = [p for p in student.parameters() if p.requires_grad]
        if not self.params:
            raise ConvertError("the converted model has no trainable parameters (requires_grad is off everywhere)")
        self.trained = processes.wrap(student)
        optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        with torch.no_grad(), self._autocast():
            self.kinds = output_loss_kinds(self.teacher(*to_device(example, self.device)), config.loss)
        self.teacher_features.take()
        self.val_loader = self._loader(processes.share(data.val), None)
        self.warmup_steps = round(config.warmup * total)
        self.eval_every = config.eval_every or max(1, total // EVALUATIONS)
        # -- start / resume: the one state of the run, which its checkpoint holds
        if saved is None:
            self.state = RunState.new(total, student, optimizer, scaler, self._scales(), config)
        else:
            self.state = RunState.resume(saved, total, student, optimizer, scaler, config)
        self.start = self.state.step
        self.resumed_from = self.start if saved is not None else None

    def train(self, notify: DistillProgress, sigint: Callable[[], bool]) -> Conversion:
        """The steps from the state's step to the last (each followed by a validation when due), until a stop;
        then the weights kept, the checkpoint, and the student and its report handed back."""
        state, seconds = self.state, Seconds()
        notify(DistillEvent("start", self.start, self.total, message=self._describe()))
        if state.before is None:  # the student before any step (a resumed run has it)
            clock = time.perf_counter()
            state.before = self._validate(0, notify)
            seconds.eval += time.perf_counter() - clock
        stop = self._steps(notify, sigint, seconds)
        # -- stop: the best weights, or after a NaN the last good ones (which the rewind restored)
        if stop.status == "nan":
            ending = Ending("nan", self._message(stop), state.step, self._evaluate())
        else:
            ending = Ending(stop.status, self._message(stop), state.best_step, state.best_metrics)
        checkpoint = state.checkpoint(with_optimizer=stop.status != "nan")
        if stop.status != "nan":
            state.student.load_state_dict(state.best)
        notify(DistillEvent("end", state.step, self.total, metrics=ending.after, message=ending.message))
        model = self._handed_back()
        distill = distill_report(state, self._facts(), ending, seconds, state.step - self.start)
        report = dataclasses.replace(self.result.report, distill=distill)
        return dataclasses.replace(self.result, model=model, report=report, checkpoint=checkpoint)

    def _steps(self, notify: DistillProgress, sigint: Callable[[], bool], seconds: Seconds) -> _Stop:
        """Run steps until the last, a stop request, or a loss that is not finite."""
        state = self.state
        last_good = Snapshot(state.student, state.step)
        stop_requested = False
        clock = time.perf_counter()
        for step, batch in zip(range(state.step, self.total), self._train_batches(), strict=False):
            if self.processes.any(stop_requested or sigint()):  # before the forward: BatchNorm stays as it was
                return _Stop("interrupted")
            # -- step
            loss = self._loss(step, to_device(batch, self.device))
            loss_value = self.processes.mean(loss)
            if not math.isfinite(loss_value):
                state.rewind(last_good)
                return _Stop("nan", step, loss_value)
            last_good.take(step)  # -- snapshot: the weights whose loss was finite, before this update
            self._update(loss)
            state.record_step(loss_value)
            now = time.perf_counter()
            seconds.train += now - clock
            # -- validate (and tell)
            try:
                lr, eta = state.optimizer.param_groups[0]["lr"], self._eta(seconds, state.step)
                notify(DistillEvent("step", state.step, self.total, loss=loss_value, lr=lr, eta_seconds=eta))
                if state.step % self.eval_every == 0 or state.step == self.total:
                    self._validate(state.step, notify)
            except KeyboardInterrupt:  # from `notify`: stop at this step boundary, like a Ctrl-C
                stop_requested = True
            seconds.eval += time.perf_counter() - now
            clock = time.perf_counter()
        return _Stop("completed")

    def _loss(self, step: int, batch: Batch) -> torch.Tensor:
        """The loss of `batch` at `step`: output loss + feature_weight * feature loss, at this step's rate."""
        for group in self.state.optimizer.param_groups:
            group["lr"] = learning_rate(step, self.total, self.config.lr, self.warmup_steps)
        self._set_train_modes()
        with self._autocast():
            with torch.no_grad():
                target = self.teacher(*batch)
            output = self.trained(*batch)
            loss = output_loss(output, target, self.kinds, self.state.scales.outputs, self.config.temperature)
            features = feature_loss(
                self.student_features.take(), self.teacher_features.take(), self.state.scales.features
            )
        if features is None:
            return loss
        return loss + self.config.feature_weight * features

    def _update(self, loss: torch.Tensor) -> None:
        """One AdamW step on `loss` (scaled for fp16 autocast), gradients clipped."""
        optimizer, scaler = self.state.optimizer, self.state.scaler
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        scaler.step(optimizer)
        scaler.update()

    def _eta(self, seconds: Seconds, step: int) -> float:
        return (seconds.train + seconds.eval) / (step - self.start) * (self.total - step)

    # -- validation --

    def _validate(self, step: int, notify: DistillProgress) -> DistillMetrics:
        metrics = self._evaluate()
        self.state.record_validation(step, metrics)
        notify(DistillEvent("eval", step, self.total, metrics=metrics))
        return metrics

    def _scales(self) -> Scales:
        """Mean squares of the teacher's outputs and features on the validation inputs: the losses' units."""
        outputs = len(self.kinds)
        sums = torch.zeros(outputs + len(self.names), 2, dtype=torch.float64, device=self.device)  # sum x^2, count
        with torch.no_grad():
            for batch in self.val_loader:
                with self._autocast():
                    output = self.teacher(*to_device(batch, self.device))
                features = self.teacher_features.take()
                tensors = [[t] for t in float_leaves(output)] + [features[name] for name in self.names]
                for row, calls in zip(sums, tensors, strict=True):
                    for tensor in calls:
                        row[0] += tensor.double().square().sum()
                        row[1] += tensor.numel()
        means = [float(total / count) if total > 0 else 1.0 for total, count in self.processes.sum(sums).tolist()]
        return Scales(means[:outputs], dict(zip(self.names, means[outputs:], strict=True)))

    def _evaluate(self) -> DistillMetrics:
        """The student (eval mode) against the teacher on this process's share of the validation inputs, summed
        over the processes."""
        student, scales = self.state.student.eval(), self.state.scales.outputs
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # loss*n, n, diff^2, ref^2, agree, positions
        with torch.no_grad():
            for batch in self.val_loader:
                batch = to_device(batch, self.device)
                with self._autocast():
                    target, output = self.teacher(*batch), student(*batch)
                    loss = output_loss(output, target, self.kinds, scales, self.config.temperature)
                self.teacher_features.take(), self.student_features.take()
                count = len(batch[0])
                sums[0] += float(loss) * count
                sums[1] += count
                for kind, out, ref in zip(self.kinds, float_leaves(output), float_leaves(target), strict=True):
                    sums[2] += (out.double() - ref.double()).square().sum()
                    sums[3] += ref.double().square().sum()
                    if kind == "kl":
                        sums[4] += (out.argmax(1) == ref.argmax(1)).sum()
                        sums[5] += out.numel() // out.shape[1]
        loss_sum, count, diff, norm, agree, positions = self.processes.sum(sums).tolist()
        return DistillMetrics(
            loss=loss_sum / count,
            output_rel_error=math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff),
            top1_agreement=agree / positions if positions else None,
        )

    # -- helpers --

    def _set_train_modes(self) -> None:
        """Eval mode (no dropout), but BatchNorm in train mode when its statistics are updated."""
        self.state.student.eval()
        if self.config.batchnorm == "update":
            for module in self.state.student.modules():
                if isinstance(module, _BATCHNORM):
                    module.train()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp)

    def _train_batches(self) -> DataLoader[Any]:
        """The batches of the steps left, this process's share of each (the same batch per step on every run)."""
        config, state = self.config, self.state
        sampler = StepBatches(
            self.data.train_size, config.batch_size, state.step, self.total, config.seed, self.processes
        )
        return self._loader(self.data.train, sampler)

    def _loader(self, dataset: Dataset[Sample], sampler: Sampler[list[int]] | None) -> DataLoader[Any]:
        batch = max(1, self.config.batch_size // self.processes.world)
        options: dict[str, Any] = {"batch_sampler": sampler} if sampler else {"batch_size": batch}
        return DataLoader(
            dataset,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate,
            **options,
        )

    def _handed_back(self) -> nn.Module:
        """The student on the device, dtype and train/eval modes of the converted model it started from."""
        self.student_features.remove()
        model, converted = self.state.student, self.result.model
        original = next(iter(converted.parameters()), None)
        if original is not None:
            model.to(original.device)
        modes = {name: m.training for name, m in converted.named_modules()}
        for name, module in model.named_modules():
            module.training = modes.get(name, converted.training)
        return model

    def _facts(self) -> RunFacts:
        return RunFacts(
            self.result, self.data, self.config, self.names, self.kinds, self.device, self.amp,
            self.processes.world, self.resumed_from, self.warmup_steps,
        )  # fmt: skip

    def _describe(self) -> str:
        amp = f", autocast {str(self.amp).removeprefix('torch.')}" if self.amp else ""
        world = self.processes.world
        processes = f" x {world} processes" if world > 1 else ""
        resumed = f", resuming at step {self.start}" if self.start else ""
        batch = self.config.batch_size
        return f"distilling {self.total} steps on {self.device}{processes}{amp}, batch {batch}{resumed}"

    def _message(self, stop: _Stop) -> str:
        state = self.state
        if stop.status == "nan":
            return (
                f"the loss became {stop.loss} at step {stop.step + 1}: stopped, keeping the weights of step "
                f"{state.step} (the last finite loss); lower --lr (e.g. {self.config.lr / 10:g}) and --resume"
            )
        if stop.status == "interrupted":
            kept = f"kept the best weights so far (step {state.best_step})"
            return f"interrupted at step {state.step}/{self.total}: {kept}; --resume continues"
        return f"completed {self.total} steps; kept the weights of step {state.best_step} (best validation loss)"
