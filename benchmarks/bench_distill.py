"""Distillation recovers a rank-1 separable conversion: accuracy and agreement with the teacher, before and after.

Trains its own small teacher CNN on a procedurally generated image task (10 classes of shapes and textures,
32x32 RGB, random colours, positions, sizes and noise), on the CPU. Then: the teacher's accuracy; the rank-1
depthwise-separable conversion's accuracy before distillation; after `distill_result` with the default
DistillConfig on 5000 unlabeled real inputs for 600 steps, and on `synthetic` inputs for 600 steps. Accuracy
and top-1 agreement with the teacher are measured on held-out test inputs that neither training saw.
Targets (issue 4): agreement >= 95% and at most 3 points of accuracy lost, with the real inputs.

    .venv/bin/python benchmarks/bench_distill.py [--threads 2] [--steps 600] [--inputs 5000]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time

import torch
import torchvision
from torch import nn

from convert import ConvertConfig, DistillConfig, convert_model, distill_result, load_data

CLASSES = (
    "disk",
    "ring",
    "square",
    "square outline",
    "triangle",
    "cross",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
)
SIZE = 32


def make_images(count: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, size, size) normalised to about zero mean and unit variance, labels (N,)), all from `seed`;
    the shapes' sizes and positions scale with `size` (the pixel counts below are at 32)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (count,), generator=g)
    scale = size / SIZE
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")  # (size, size)
    ys, xs = ys[None], xs[None]
    cx, cy = ((torch.rand(2, count, 1, 1, generator=g) * 12 + 10) * scale).unbind(0)  # centre, 10..22 px
    r = (torch.rand(count, 1, 1, generator=g) * 4 + 6) * scale  # half-size, 6..10 px
    period = torch.randint(3, 6, (count, 1, 1), generator=g).float() * scale  # stripe / check period, px
    dx, dy = xs - cx, ys - cy
    box = (dx.abs() <= r) & (dy.abs() <= r)
    dist = (dx**2 + dy**2).sqrt()
    thick = r / 3
    masks = torch.stack(
        [
            dist <= r,
            (dist <= r) & (dist >= r - thick),
            box,
            box & ((dx.abs() >= r - thick) | (dy.abs() >= r - thick)),
            (dy <= r) & (dy >= -r) & (dx.abs() <= (dy + r) / 2),
            box & ((dx.abs() <= thick / 1.5) | (dy.abs() <= thick / 1.5)),
            box & (torch.sin(2 * math.pi * ys / period) > 0),
            box & (torch.sin(2 * math.pi * xs / period) > 0),
            box & (torch.sin(2 * math.pi * (xs + ys) / period / 1.4) > 0),
            box & (((xs / period).floor() + (ys / period).floor()) % 2 == 0),
        ]
    )  # (classes, N, size, size)
    mask = masks[labels, torch.arange(count)].float()[:, None]  # (N, 1, size, size)
    foreground = torch.rand(count, 3, 1, 1, generator=g)
    background = torch.rand(count, 3, 1, 1, generator=g)
    contrast = (foreground - background).abs().sum(1, keepdim=True) < 0.6  # too alike: push them apart
    foreground = torch.where(contrast, 1 - background, foreground)
    images = background + (foreground - background) * mask
    images = images + 0.08 * torch.randn(count, 3, size, size, generator=g)
    return (images - 0.5) / 0.3, labels


def teacher_cnn() -> nn.Module:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16),
        *block(16, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, len(CLASSES)),
    )


def train_teacher(images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = teacher_cnn()
    batch = 128
    steps = epochs * math.ceil(len(images) / batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps)
    model.train()
    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for start in range(0, len(images), batch):
            index = order[start : start + batch]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    return model.eval()


@torch.no_grad()
def predictions(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i : i + 500]).argmax(1) for i in range(0, len(images), 500)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: no spinning threads on a shared CPU)"
    )
    parser.add_argument("--steps", type=int, default=600, help="distillation steps")
    parser.add_argument("--inputs", type=int, default=5000, help="unlabeled real inputs for distillation")
    parser.add_argument("--teacher-inputs", type=int, default=10000, help="labeled inputs to train the teacher")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--test", type=int, default=2000, help="held-out labeled test inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument(
        "--ablation", action="store_true", help="also each default changed alone (lr, feature weight, BatchNorm)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, torchvision {torchvision.__version__}, {machine}, {args.threads} threads")

    clock = time.perf_counter()
    train_x, train_y = make_images(args.teacher_inputs, seed=1)
    unlabeled, _ = make_images(args.inputs, seed=2)  # labels thrown away: distillation needs none
    test_x, test_y = make_images(args.test, seed=3)
    teacher = train_teacher(train_x, train_y, args.teacher_epochs, args.seed)
    teacher_pred = predictions(teacher, test_x)
    print(f"teacher trained in {time.perf_counter() - clock:.0f} s on {args.teacher_inputs} labeled inputs")

    rows = []

    def row(name: str, model: nn.Module, seconds: float | None = None, steps_per_s: float | None = None) -> None:
        pred = predictions(model, test_x)
        accuracy = float((pred == test_y).float().mean())
        agreement = float((pred == teacher_pred).float().mean())
        rows.append((name, accuracy, agreement, seconds, steps_per_s))

    row("teacher", teacher)
    converted = convert_model(teacher, test_x[:1], ConvertConfig(target="separable", rank=1))
    totals = converted.report.totals
    row("rank-1 separable, SVD only", converted.model)
    config = DistillConfig(steps=args.steps, seed=args.seed)
    runs = [(f"distilled, {args.inputs} real inputs", unlabeled, config)]
    if not args.skip_synthetic:
        runs.append(("distilled, synthetic inputs", "synthetic", config))
    if args.ablation:
        changes = [
            {"lr": 1e-3},
            {"lr": 1e-2},
            {"feature_weight": 0.0},
            {"feature_weight": 10.0},
            {"batchnorm": "freeze"},
        ]
        for change in changes:
            label = ", ".join(f"{key} {value}" for key, value in change.items())
            runs.append((f"real inputs, {label}", unlabeled, dataclasses.replace(config, **change)))
    for name, source, run_config in runs:
        data = load_data(source, test_x[:1], seed=args.seed)
        clock = time.perf_counter()
        result = distill_result(converted, teacher, data, run_config)
        distill = result.report.distill
        row(f"{name}, {distill.steps} steps", result.model, time.perf_counter() - clock, distill.steps_per_second)

    print(
        f"\nrank-1 separable: MACs {totals.macs_before / 1e6:.2f}M -> {totals.macs_after / 1e6:.2f}M, "
        f"params {totals.params_before} -> {totals.params_after}; DistillConfig defaults: lr {config.lr:g}, "
        f"batch {config.batch_size}, feature weight {config.feature_weight:g}, temperature {config.temperature:g}, "
        f"BatchNorm {config.batchnorm}, warm-up {config.warmup:g}"
    )
    print(f"test: {args.test} held-out inputs\n")
    print("| model | test accuracy | top-1 agreement with teacher | distill wall s | steps/s |")
    print("|---|---:|---:|---:|---:|")
    for name, accuracy, agreement, seconds, steps_per_s in rows:
        wall = "" if seconds is None else f"{seconds:.0f}"
        speed = "" if steps_per_s is None else f"{steps_per_s:.2f}"
        print(f"| {name} | {accuracy:.2%} | {agreement:.2%} | {wall} | {speed} |")
    teacher_accuracy, real = rows[0][1], rows[2]
    met = real[2] >= 0.95 and teacher_accuracy - real[1] <= 0.03
    print(
        f"\ntarget (real inputs): agreement >= 95% and accuracy loss <= 3 points: "
        f"{'met' if met else 'NOT met'} ({real[2]:.2%}, {100 * (teacher_accuracy - real[1]):.2f} points)"
    )


if __name__ == "__main__":
    main()
