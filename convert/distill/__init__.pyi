"""The public names of `convert.distill` (imported on first use: see __init__.py)."""

from .config import DistillConfig, DistillEvent
from .data import DistillData, image_transform, load_data
from .trainer import distill_result

__all__ = ["DistillConfig", "DistillData", "DistillEvent", "distill_result", "image_transform", "load_data"]
