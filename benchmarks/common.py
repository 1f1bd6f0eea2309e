"""What several benchmarks share: training a classifier on generated labeled images (the teachers they convert)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["train_classifier"]


def train_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    weight_decay: float,
    seed: int,
    batch: int = 64,
) -> nn.Module:
    """Train `model` in place on random batches of (images, labels): AdamW, one-cycle schedule to `lr`, cross
    entropy; batches drawn by a generator seeded with `seed`. Returns the model, in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (batch,), generator=g)
        loss = nn.functional.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()
