"""The latency-aware planner (`--to auto`): candidates, latency measurement and cache, search, planner."""

from convert.auto.config import AutoConfig
from convert.auto.planner import AutoPlan, LatencyPlanner, plan_for_speed

__all__ = ["AutoConfig", "AutoPlan", "LatencyPlanner", "plan_for_speed"]
