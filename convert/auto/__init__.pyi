"""The public names of `convert.auto` (imported on first use: see __init__.py)."""

from .config import AutoConfig
from .planner import AutoPlan, LatencyPlanner, plan_for_speed

__all__ = ["AutoConfig", "AutoPlan", "LatencyPlanner", "plan_for_speed"]
