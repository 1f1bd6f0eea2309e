"""Knowledge distillation of the converted model with the original as teacher: config, data, trainer."""

from convert.distill.data import DistillData, image_transform, load_data
from convert.distill.trainer import DistillConfig, DistillEvent, distill_result

__all__ = ["DistillConfig", "DistillData", "DistillEvent", "distill_result", "image_transform", "load_data"]
