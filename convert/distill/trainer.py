"""Distillation: fine-tune the converted model (student) to match the original (teacher) on unlabeled inputs.

Loss = output loss + feature_weight * feature loss. The output loss is the KL divergence with temperature for
class scores (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"), a relative MSE otherwise;
the feature loss is the relative MSE between each converted layer's output and the teacher's conv output at
the same site (FitNets, Romero et al. 2015), both read with forward hooks. AdamW with linear warm-up then
cosine decay. Under torchrun the student is wrapped in DDP and every process takes its share of each batch,
so that a run gives the same weights on any number of processes (BatchNorm in "update" mode aside).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from convert.conversion import Conversion
from convert.distill.data import DistillData, Inputs, stream_seed
from convert.errors import ConvertError, one_line
from convert.report.schema import DistillMetrics, DistillReport
from convert.surgery.analysis import analyze, functional_as_modules
from convert.surgery.verify import tensors_of

DEFAULT_STEPS = 600
DEFAULT_BATCH_SIZE = 64
DEFAULT_LR = 3e-3
DEFAULT_WEIGHT_DECAY = 0.0
DEFAULT_WARMUP = 0.05  # share of the steps with a linear warm-up of the learning rate
DEFAULT_FEATURE_WEIGHT = 1.0
DEFAULT_TEMPERATURE = 4.0
DEFAULT_BATCHNORM = "update"
DEFAULT_GRAD_CLIP = 1.0  # max gradient norm
EVALUATIONS = 10  # validations per run by default, besides the one before the first step
LOSS_WINDOW = 10  # steps averaged for the report's loss_start and loss_end
CURVE_POINTS = 200  # at most this many points of the training loss curve in the report
CHECKPOINT_VERSION = 1
LOSSES: tuple[str, ...] = ("auto", "kl", "mse")
BATCHNORM_MODES: tuple[str, ...] = ("update", "freeze")
TRAINING_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """How to fine-tune. Override fields with `dataclasses.replace`."""

    # Optimizer steps; None: DEFAULT_STEPS, or what `epochs` makes. Mutually exclusive with `epochs`.
    steps: int | None = None
    # Passes over the training inputs (steps = ceil(epochs * inputs / batch_size)); not for synthetic data.
    epochs: float | None = None
    # Inputs per step, over all processes (each of W processes takes batch_size / W).
    batch_size: int = DEFAULT_BATCH_SIZE
    # Peak learning rate of AdamW: linear warm-up over `warmup` of the steps, then cosine decay to 0.
    lr: float = DEFAULT_LR
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    warmup: float = DEFAULT_WARMUP
    # Output loss: "auto" is KL with temperature for outputs shaped (N, classes), relative MSE for the others;
    # "kl" uses KL over dim 1 for every output (e.g. per-pixel class scores); "mse" relative MSE for all.
    loss: Literal["auto", "kl", "mse"] = "auto"
    temperature: float = DEFAULT_TEMPERATURE
    # Weight of the feature loss: relative MSE between each converted layer's output and the teacher's conv there.
    feature_weight: float = DEFAULT_FEATURE_WEIGHT
    # Student BatchNorm: "update" normalises with batch statistics and updates the running averages;
    # "freeze" keeps the running statistics (eval mode). Scale and shift are trained either way.
    batchnorm: Literal["update", "freeze"] = DEFAULT_BATCHNORM
    # Where to train: "auto" is CUDA when torch sees a GPU (cuda:LOCAL_RANK under torchrun), else the CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Autocast on CUDA: "auto" is bf16 where supported, else fp16 (with loss scaling); the CPU trains in float32.
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    # Gradients are clipped to this norm; None: not clipped.
    grad_clip: float | None = DEFAULT_GRAD_CLIP
    # Steps between validations (the best weights are kept); None: EVALUATIONS per run.
    eval_every: int | None = None
    # Seeds the batch order and synthetic inputs: the same seed gives the same weights (bit for bit on the CPU).
    seed: int = 0
    # DataLoader worker processes (decoding images); 0: in the training process.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ConvertError("give either steps or epochs, not both")
        positive = {"steps": self.steps, "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}
        positive |= {"temperature": self.temperature, "eval_every": self.eval_every, "grad_clip": self.grad_clip}
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ConvertError(f"{name} {value} is not valid: use a positive number")
        for name, value in (("feature_weight", self.feature_weight), ("weight_decay", self.weight_decay)):
            if not value >= 0:
                raise ConvertError(f"{name} {value} is not valid: use 0 or a positive number")
        if not 0 <= self.warmup < 1:
            raise ConvertError(f"warmup {self.warmup} is not valid: use a share of the steps in [0, 1)")
        choices = {"loss": LOSSES, "batchnorm": BATCHNORM_MODES, "device": TRAINING_DEVICES, "amp": AMP_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConvertError(f"{name} {getattr(self, name)!r} is not valid: use one of {', '.join(allowed)}")
        if self.seed < 0 or self.workers < 0:
            raise ConvertError("seed and workers are not valid below 0")


@dataclasses.dataclass
class DistillEvent:
    """Progress of a distillation, for a progress bar or a stream of events (the gRPC service)."""

    kind: Literal["start", "step", "eval", "end"]
    step: int  # optimizer steps done
    total: int  # steps asked for
    loss: float | None = None  # "step": this step's training loss
    lr: float | None = None  # "step": the learning rate it used
    eta_seconds: float | None = None  # "step": time left, from the speed so far
    metrics: DistillMetrics | None = None  # "eval": the student against the teacher on the validation inputs
    message: str | None = None  # "start": what is trained where; "end": how it ended


DistillProgress = Callable[[DistillEvent], None]


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
    (gloo on the CPU, NCCL on CUDA) and trains with DDP.

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
    with (
        _process_group(device) as (rank, world, device),
        _deterministic(device),
        torch.random.fork_rng(devices=[]),  # the caller's random state is left as it was
        _stop_on_sigint() as sigint,
    ):
        if config.batch_size % world or data.val_size < world:
            raise ConvertError(
                f"{world} processes need a batch size divisible by {world} (not {config.batch_size}) and at "
                f"least {world} validation inputs (not {data.val_size})"
            )
        run = _Run(result, teacher, data, config, device, amp, rank, world)
        return run.train(total, saved, notify, sigint)


def check_distill_options(config: DistillConfig, data: DistillData) -> None:
    """Everything `distill_result` would refuse about `config` and `data` before training: call it before
    converting, so that a bad option costs nothing.

    Raises:
        ConvertError: for a device or autocast that cannot run here, or epochs of synthetic inputs.
    """
    _plan(config, data)


def _plan(config: DistillConfig, data: DistillData) -> tuple[int, torch.device, torch.dtype | None]:
    """(steps, device, autocast dtype) of a run."""
    device = resolve_training_device(config.device)
    return _total_steps(config, data), device, _amp_dtype(config.amp, device)


def resolve_training_device(name: str) -> torch.device:
    """The torch device for `name` (auto, cpu, cuda).

    Raises:
        ConvertError: for cuda where torch sees no GPU.
    """
    if name not in TRAINING_DEVICES:
        raise ConvertError(f"unknown training device {name!r}: use one of {', '.join(TRAINING_DEVICES)}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConvertError("--device cuda cannot train here (torch sees no CUDA GPU): use --device cpu or auto")
    return torch.device("cuda")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a distillation checkpoint (weights_only: it holds tensors and numbers, no code).

    Raises:
        ConvertError: when it is missing, unreadable, or not a distillation checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"no distillation checkpoint at {path}: run without --resume first (it writes one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is a bad file
        raise ConvertError(f"cannot read the checkpoint {path} ({one_line(e)}): run without --resume") from e
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ConvertError(f"{path} is not a distillation checkpoint of this version: run without --resume")
    return state


def is_main_process() -> bool:
    """False in the processes of a torchrun launch other than rank 0 (which writes the results)."""
    return int(os.environ.get("RANK", "0")) == 0


def learning_rate(step: int, total: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay towards 0 at `total`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def output_loss_kinds(output: Any, loss: str) -> list[str]:
    """Per floating point output tensor: "kl" or "mse", for `loss` auto, kl or mse.

    Raises:
        ConvertError: when the output has no floating point tensor, or `loss` kl meets an output without a
            class dimension.
    """
    leaves = _float_leaves(output)
    if not leaves:
        raise ConvertError("the model's output holds no floating point tensor to match: distillation needs one")
    if loss == "mse":
        return ["mse"] * len(leaves)
    if loss == "kl":
        if any(t.dim() < 2 or t.shape[1] < 2 for t in leaves):
            shapes = ", ".join("x".join(map(str, t.shape)) for t in leaves)
            raise ConvertError(f"loss kl needs class scores in dim 1 of every output (shapes: {shapes}): use mse")
        return ["kl"] * len(leaves)
    return ["kl" if t.dim() == 2 and t.shape[1] >= 2 else "mse" for t in leaves]


def _float_leaves(output: Any) -> list[torch.Tensor]:
    return [t for t in tensors_of(output) if t.is_floating_point()]


def _total_steps(config: DistillConfig, data: DistillData) -> int:
    if config.epochs is None:
        return config.steps or DEFAULT_STEPS
    if data.train_size is None:
        raise ConvertError("synthetic inputs have no epochs: give a number of steps instead (--steps N)")
    return max(1, math.ceil(config.epochs * data.train_size / config.batch_size))


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if mode in _AMP_DTYPES:
            raise ConvertError(f"--amp {mode} runs on CUDA only: use --amp off (or auto) on the CPU")
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _AMP_DTYPES.get(mode)


# --- the training run ---------------------------------------------------------------------------------------------


class _Run:
    """One distillation: the two models with their hooks, the data, the optimizer, and what was recorded."""

    def __init__(
        self,
        result: Conversion,
        teacher: nn.Module,
        data: DistillData,
        config: DistillConfig,
        device: torch.device,
        amp: torch.dtype | None,
        rank: int,
        world: int,
    ) -> None:
        self.result, self.data, self.config = result, data, config
        self.device, self.amp, self.rank, self.world = device, amp, rank, world
        torch.manual_seed(config.seed)
        example = _batch(data.val, [0])
        self.student = copy.deepcopy(result.model)
        teacher, self.names, student_sites, teacher_sites = _feature_sites(result, self.student, teacher, example)
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student.to(device)
        self.student_features, self.teacher_features = _Features(student_sites), _Features(teacher_sites)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        if not self.params:
            raise ConvertError("the converted model has no trainable parameters (requires_grad is off everywhere)")
        self.trained = self.student
        if world > 1:
            self.trained = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        with torch.no_grad(), self._autocast():
            self.kinds = output_loss_kinds(self.teacher(*_to(example, device)), config.loss)
        self.teacher_features.take()
        self.val_loader = self._loader(Subset(data.val, range(rank, len(data.val), world)), None)

    # -- the loop --

    def train(
        self, total: int, saved: dict[str, Any] | None, notify: DistillProgress, sigint: Callable[[], bool]
    ) -> Conversion:
        config, data = self.config, self.data
        state = self._start(saved)
        start = state["step"]
        warmup_steps = round(config.warmup * total)
        eval_every = config.eval_every or max(1, total // EVALUATIONS)
        last = _Snapshot(self.student, start)
        status, stopped_at = "completed", None
        train_seconds = eval_seconds = 0.0
        notify(DistillEvent("start", start, total, message=self._describe(total, start)))
        if state["before"] is None:
            clock = time.perf_counter()
            state["before"] = self._validate(0, state, notify, total)
            eval_seconds += time.perf_counter() - clock
        sampler = _StepBatches(data.train_size, config.batch_size, start, total, config.seed, self.rank, self.world)
        stop_requested = False
        clock = time.perf_counter()
        for step, batch in zip(range(start, total), self._loader(data.train, sampler), strict=False):
            if self._any(stop_requested or sigint()):  # before the forward: BatchNorm statistics stay as they were
                status = "interrupted"
                break
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(step, total, config.lr, warmup_steps)
            self._set_train_modes()
            loss = self._loss(_to(batch, self.device))
            loss_value = self._mean(loss)
            if not math.isfinite(loss_value):
                status, stopped_at = "nan", step
                last.restore()
                state["step"] = last.step
                del state["history"][last.step :]
                state["val_curve"] = [point for point in state["val_curve"] if point[0] <= last.step]
                break
            last.take(step)
            self._update(loss)
            state["step"] = step + 1
            state["history"].append(loss_value)
            now = time.perf_counter()
            train_seconds += now - clock
            done = step + 1 - start
            try:
                notify(
                    DistillEvent(
                        "step",
                        step + 1,
                        total,
                        loss=loss_value,
                        lr=self.optimizer.param_groups[0]["lr"],
                        eta_seconds=(train_seconds + eval_seconds) / done * (total - step - 1),
                    )
                )
                if (step + 1) % eval_every == 0 or step + 1 == total:
                    self._validate(step + 1, state, notify, total)
            except KeyboardInterrupt:  # from `notify`: stop at this step boundary, like a Ctrl-C
                stop_requested = True
            eval_seconds += time.perf_counter() - now
            clock = time.perf_counter()
        steps_run = state["step"] - start
        if status == "nan":
            kept, kept_step = None, state["step"]  # the last good weights, restored above
            after = self._evaluate()
            message = (
                f"the loss became {loss_value} at step {stopped_at + 1}: stopped, keeping the weights of step "
                f"{kept_step} (the last finite loss); lower --lr (e.g. {config.lr / 10:g}) and --resume"
            )
        else:
            kept, kept_step, after = state["best"], state["best_step"], state["best_metrics"]
            message = (
                f"interrupted at step {state['step']}/{total}: kept the best weights so far (step {kept_step}); "
                "--resume continues"
                if status == "interrupted"
                else f"completed {total} steps; kept the weights of step {kept_step} (best validation loss)"
            )
        checkpoint = self._checkpoint(state, total, with_optimizer=status != "nan")
        if kept is not None:
            self.student.load_state_dict(kept)
        notify(DistillEvent("end", state["step"], total, metrics=after, message=message))
        model = self._handed_back()
        report = dataclasses.replace(self.result.report)
        report.distill = self._report(
            state, total, status, message, kept_step, after, train_seconds, eval_seconds, steps_run, warmup_steps
        )
        return dataclasses.replace(self.result, model=model, report=report, checkpoint=checkpoint)

    def _update(self, loss: torch.Tensor) -> None:
        """One AdamW step on `loss` (scaled for fp16 autocast), gradients clipped."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _start(self, saved: dict[str, Any] | None) -> dict[str, Any]:
        """The state of the run: new, or from a checkpoint; sets the losses' units (`scales`)."""
        if saved is None:
            self.scales = self._scales()
            return {
                "step": 0,
                "resumed_from": None,
                "history": [],
                "val_curve": [],
                "before": None,
                "best": None,
                "best_step": 0,
                "best_metrics": None,
            }
        try:
            self.student.load_state_dict(saved["student"])
            if saved.get("optimizer") is not None:
                self.optimizer.load_state_dict(saved["optimizer"])
                self.scaler.load_state_dict(saved["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise ConvertError(
                f"the checkpoint does not fit this conversion ({one_line(e)}): resume with the options that wrote "
                "it, or run without --resume"
            ) from e
        self.scales = {"outputs": list(saved["scales"]["outputs"]), "features": dict(saved["scales"]["features"])}
        return {
            "step": int(saved["step"]),
            "resumed_from": int(saved["step"]),
            "history": list(saved["history"]),
            "val_curve": [list(point) for point in saved["val_curve"]],
            "before": DistillMetrics(**saved["before"]),
            "best": saved["best"],
            "best_step": int(saved["best_step"]),
            "best_metrics": DistillMetrics(**saved["best_metrics"]),
        }

    def _loss(self, batch: Inputs) -> torch.Tensor:
        with self._autocast():
            with torch.no_grad():
                target = self.teacher(*batch)
            output = self.trained(*batch)
            loss = _output_loss(output, target, self.kinds, self.scales["outputs"], self.config.temperature)
            features = _feature_loss(self.student_features.take(), self.teacher_features.take(), self.scales)
        if features is None:
            return loss
        return loss + self.config.feature_weight * features

    def _any(self, flag: bool) -> bool:
        """Whether any process says so: every process stops at the same step."""
        if self.world == 1:
            return flag
        value = torch.tensor(float(flag), device=self.device)
        dist.all_reduce(value)
        return bool(value > 0)

    def _mean(self, loss: torch.Tensor) -> float:
        """The loss averaged over the processes: every process sees the same, and stops alike on a NaN."""
        value = loss.detach().float()
        if self.world > 1:
            dist.all_reduce(value)
            value = value / self.world
        return float(value)

    # -- validation --

    def _scales(self) -> dict[str, Any]:
        """Mean squares of the teacher's outputs and features on the validation inputs: the losses' units."""
        outputs = len(self.kinds)
        sums = torch.zeros(outputs + len(self.names), 2, dtype=torch.float64, device=self.device)  # sum x^2, count
        with torch.no_grad():
            for batch in self.val_loader:
                with self._autocast():
                    output = self.teacher(*_to(batch, self.device))
                features = self.teacher_features.take()
                tensors = [[t] for t in _float_leaves(output)] + [features[name] for name in self.names]
                for row, calls in zip(sums, tensors, strict=True):
                    for tensor in calls:
                        row[0] += tensor.double().square().sum()
                        row[1] += tensor.numel()
        if self.world > 1:
            dist.all_reduce(sums)
        means = [float(total / count) if total > 0 else 1.0 for total, count in sums.tolist()]
        return {"outputs": means[:outputs], "features": dict(zip(self.names, means[outputs:], strict=True))}

    def _validate(self, step: int, state: dict[str, Any], notify: DistillProgress, total: int) -> DistillMetrics:
        metrics = self._evaluate()
        state["val_curve"].append([step, metrics.loss])
        if state["best"] is None or metrics.loss < state["best_metrics"].loss:
            state["best"] = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}
            state["best_step"], state["best_metrics"] = step, metrics
        notify(DistillEvent("eval", step, total, metrics=metrics))
        return metrics

    def _evaluate(self) -> DistillMetrics:
        """The student (eval mode) against the teacher on this process's share of the validation inputs, summed
        over the processes."""
        self.student.eval()
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # loss*n, n, diff^2, ref^2, agree, positions
        with torch.no_grad():
            for batch in self.val_loader:
                batch = _to(batch, self.device)
                with self._autocast():
                    target, output = self.teacher(*batch), self.student(*batch)
                    loss = _output_loss(output, target, self.kinds, self.scales["outputs"], self.config.temperature)
                self.teacher_features.take(), self.student_features.take()
                count = len(batch[0])
                sums[0] += float(loss) * count
                sums[1] += count
                for kind, out, ref in zip(self.kinds, _float_leaves(output), _float_leaves(target), strict=True):
                    sums[2] += (out.double() - ref.double()).square().sum()
                    sums[3] += ref.double().square().sum()
                    if kind == "kl":
                        sums[4] += (out.argmax(1) == ref.argmax(1)).sum()
                        sums[5] += out.numel() // out.shape[1]
        if self.world > 1:
            dist.all_reduce(sums)
        loss_sum, count, diff, norm, agree, positions = sums.tolist()
        return DistillMetrics(
            loss=loss_sum / count,
            output_rel_error=math.sqrt(diff / norm) if norm > 0 else math.sqrt(diff),
            top1_agreement=agree / positions if positions else None,
        )

    # -- helpers --

    def _set_train_modes(self) -> None:
        """Eval mode (no dropout), but BatchNorm in train mode when its statistics are updated."""
        self.student.eval()
        if self.config.batchnorm == "update":
            for module in self.student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp)

    def _loader(self, dataset: Dataset[Inputs], sampler: Sampler[list[int]] | None) -> DataLoader[Any]:
        batch = max(1, self.config.batch_size // self.world)
        options: dict[str, Any] = {"batch_sampler": sampler} if sampler else {"batch_size": batch}
        return DataLoader(
            dataset,
            num_workers=self.config.workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=_collate,
            **options,
        )

    def _handed_back(self) -> nn.Module:
        """The student on the device, dtype and train/eval modes of the converted model it started from."""
        self.student_features.remove()
        model = self.student
        original = next(iter(self.result.model.parameters()), None)
        if original is not None:
            model.to(original.device)
        modes = {name: m.training for name, m in self.result.model.named_modules()}
        for name, module in model.named_modules():
            module.training = modes.get(name, self.result.model.training)
        return model

    def _describe(self, total: int, start: int) -> str:
        amp = f", autocast {str(self.amp).removeprefix('torch.')}" if self.amp else ""
        processes = f" x {self.world} processes" if self.world > 1 else ""
        resumed = f", resuming at step {start}" if start else ""
        return f"distilling {total} steps on {self.device}{processes}{amp}, batch {self.config.batch_size}{resumed}"

    def _checkpoint(self, state: dict[str, Any], total: int, *, with_optimizer: bool) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "step": state["step"],
            "total_steps": total,
            "student": {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()},
            "optimizer": self.optimizer.state_dict() if with_optimizer else None,
            "scaler": self.scaler.state_dict() if with_optimizer else None,
            "history": state["history"],
            "val_curve": state["val_curve"],
            "before": dataclasses.asdict(state["before"]),
            "best": state["best"],
            "best_step": state["best_step"],
            "best_metrics": dataclasses.asdict(state["best_metrics"]),
            "scales": self.scales,
            "config": dataclasses.asdict(self.config),
        }

    def _report(
        self,
        state: dict[str, Any],
        total: int,
        status: str,
        message: str,
        kept_step: int,
        after: DistillMetrics,
        train_seconds: float,
        eval_seconds: float,
        steps_run: int,
        warmup_steps: int,
    ) -> DistillReport:
        config, data, history = self.config, self.data, state["history"]
        notes = []
        if data.synthetic:
            notes.append(
                "trained on synthetic (random) inputs: the figures are on "
                f"{data.val_source}; accuracy on real data is unknown"
            )
        unmatched = [row.name for row in self.result.report.layers if row.status == "converted"]
        unmatched = [name for name in unmatched if name not in self.names]
        if unmatched:
            notes.append(
                f"{len(unmatched)} converted layer(s) have no conv output in the original model to match "
                f"({', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''}): output loss only there"
            )
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.student.modules())
        if self.world > 1 and config.batchnorm == "update" and has_batchnorm:
            notes.append("BatchNorm batch statistics are per process (DDP, no SyncBatchNorm)")
        if state["resumed_from"] is not None:
            notes.append(f"resumed from the checkpoint of step {state['resumed_from']}")
        window = min(LOSS_WINDOW, len(history)) or 1
        return DistillReport(
            status=status,
            message=message,
            data=data.source,
            val_data=data.val_source,
            synthetic=data.synthetic,
            steps=state["step"],
            total_steps=total,
            resumed_from=state["resumed_from"],
            batch_size=config.batch_size,
            epochs=None if data.train_size is None else state["step"] * config.batch_size / data.train_size,
            lr=config.lr,
            warmup_steps=warmup_steps,
            weight_decay=config.weight_decay,
            output_loss=list(self.kinds),
            temperature=config.temperature,
            feature_weight=config.feature_weight,
            batchnorm=config.batchnorm,
            feature_layers=list(self.names),
            unmatched_layers=unmatched,
            device=str(self.device),
            amp=str(self.amp).removeprefix("torch.") if self.amp else None,
            world_size=self.world,
            seed=config.seed,
            seconds=round(train_seconds, 3),
            steps_per_second=round(steps_run / train_seconds, 3) if train_seconds > 0 else 0.0,
            eval_seconds=round(eval_seconds, 3),
            loss_start=sum(history[:window]) / window if history else math.nan,
            loss_end=sum(history[-window:]) / window if history else math.nan,
            before=state["before"],
            after=after,
            best_step=kept_step,
            curve=_curve(history),
            val_curve=state["val_curve"],
            notes=notes,
        )


# --- losses -------------------------------------------------------------------------------------------------------


def _output_loss(
    output: Any, target: Any, kinds: Sequence[str], scales: Sequence[float], temperature: float
) -> torch.Tensor:
    """Mean over output tensors of: KL(teacher || student) at `temperature` (times T^2, per sample and
    position), or MSE / the teacher's mean square."""
    terms = []
    for kind, out, ref, scale in zip(kinds, _float_leaves(output), _float_leaves(target), scales, strict=True):
        out, ref = out.float(), ref.float()
        if kind == "kl":
            positions = out.numel() // out.shape[1]
            log_p = F.log_softmax(out / temperature, dim=1)
            log_q = F.log_softmax(ref / temperature, dim=1)
            terms.append(F.kl_div(log_p, log_q, reduction="sum", log_target=True) * temperature**2 / positions)
        else:
            terms.append(F.mse_loss(out, ref) / scale)
    return torch.stack(terms).mean()


def _feature_loss(
    student: dict[str, list[torch.Tensor]], teacher: dict[str, list[torch.Tensor]], scales: dict[str, Any]
) -> torch.Tensor | None:
    """Mean over converted layers (and their call sites) of MSE / the teacher's mean square there."""
    terms = [
        F.mse_loss(out.float(), ref.float()) / scales["features"][name]
        for name, refs in teacher.items()
        for out, ref in zip(student[name], refs, strict=True)
    ]
    return torch.stack(terms).mean() if terms else None


# --- feature sites ------------------------------------------------------------------------------------------------


class _Features:
    """Forward hooks that record the outputs of some modules, per call, until taken."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
        self.handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _args: Any, output: torch.Tensor) -> None:
            self.outputs[name].append(output)

        return record

    def take(self) -> dict[str, list[torch.Tensor]]:
        outputs, self.outputs = self.outputs, {name: [] for name in self.outputs}
        return outputs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _feature_sites(
    result: Conversion, student: nn.Module, teacher: nn.Module, example: Inputs
) -> tuple[nn.Module, list[str], dict[str, nn.Module], dict[str, nn.Module]]:
    """(teacher copy to run, matched layer names, student modules, teacher modules) for the feature loss.

    A converted layer's replacement is a submodule of the student (`result.replaced`). In the teacher, the
    same conv is the module of that name (fx, module walk, and export graphs read `name.weight`); a
    functional conv of the teacher (F.conv2d on its own weight, or a .pt2 graph) has no module to hook, so
    the teacher is traced as the conversion traced it and those calls become conv modules with the same
    weights (an exact rewrite).
    """
    names = [row.name for row in result.report.layers if row.status == "converted"]
    missing = [name for name in names if _conv_at(teacher, name) is None]
    more = {}
    if missing:  # a copy of the teacher with those calls as modules
        teacher, more = _functional_convs_as_modules(teacher, missing, example)
    else:
        teacher = copy.deepcopy(teacher)
    found = {name: _conv_at(teacher, name) for name in names} | more
    matched = [name for name in names if found.get(name) is not None]
    students = {name: student.get_submodule(result.replaced.get(name, name)) for name in matched}
    return teacher, matched, students, {name: found[name] for name in matched}


def _conv_at(model: nn.Module, name: str) -> nn.Module | None:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module if isinstance(module, nn.modules.conv._ConvNd) else None


def _functional_convs_as_modules(
    teacher: nn.Module, names: list[str], example: Inputs
) -> tuple[nn.Module, dict[str, nn.Module]]:
    parameter = next(iter(teacher.parameters()), None)
    example = _to(example, parameter.device) if parameter is not None else example
    return functional_as_modules(analyze(teacher, example), set(names))


# --- data plumbing ------------------------------------------------------------------------------------------------


class _StepBatches(Sampler[list[int]]):
    """Indices of the batches of steps start..total-1, this process's share of each.

    The inputs are read in epochs of a permutation seeded by (seed, epoch), back to back (a batch may span two
    epochs), so the batch of a step is the same on every run and after a resume. Synthetic inputs (size None)
    are all different: index = position in the stream.
    """

    def __init__(self, size: int | None, batch: int, start: int, total: int, seed: int, rank: int, world: int):
        self.size, self.batch, self.start, self.total = size, batch, start, total
        self.seed, self.rank, self.world = seed, rank, world
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


def _collate(samples: list[Inputs]) -> Inputs:
    return tuple(default_collate(samples))


def _batch(dataset: Dataset[Inputs], indices: Sequence[int]) -> Inputs:
    return _collate([dataset[i] for i in indices])


def _to(batch: Inputs, device: torch.device) -> Inputs:
    return tuple(t.to(device, non_blocking=True) for t in batch)


class _Snapshot:
    """A copy of a model's parameters and buffers, taken before each update: the last good weights."""

    def __init__(self, model: nn.Module, step: int) -> None:
        self.live = list(model.state_dict().values())
        self.saved = [t.detach().clone() for t in self.live]
        self.step = step  # updates done to the saved weights

    def take(self, step: int) -> None:
        with torch.no_grad():
            for saved, live in zip(self.saved, self.live, strict=True):
                saved.copy_(live)
        self.step = step

    def restore(self) -> None:
        with torch.no_grad():
            for saved, live in zip(self.saved, self.live, strict=True):
                live.copy_(saved)


def _curve(history: list[float]) -> list[list[float]]:
    """[step, mean loss] over buckets of steps, at most CURVE_POINTS of them."""
    size = max(1, math.ceil(len(history) / CURVE_POINTS))
    return [
        [index + len(chunk), sum(chunk) / len(chunk)]
        for index in range(0, len(history), size)
        for chunk in [history[index : index + size]]
    ]


# --- processes, determinism, Ctrl-C -------------------------------------------------------------------------------


@contextlib.contextmanager
def _process_group(device: torch.device) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, this process's device): joins torchrun's process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not dist.is_initialized():
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if created:
            dist.destroy_process_group()


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
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
def _stop_on_sigint() -> Iterator[Callable[[], bool]]:
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
