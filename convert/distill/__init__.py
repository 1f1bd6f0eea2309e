"""Knowledge distillation of the converted model with the original as teacher: config, data (+ datasets), losses,
features, state (the checkpoint), parallel (torchrun), summary (the report), trainer."""

from convert.distill.config import DistillConfig, DistillEvent
from convert.distill.data import DistillData, image_transform, load_data
from convert.distill.trainer import distill_result

__all__ = ["DistillConfig", "DistillData", "DistillEvent", "distill_result", "image_transform", "load_data"]
