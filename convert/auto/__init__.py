"""The latency-aware planner (`--to auto`): candidates, latency measurement and cache, search, planner."""

from convert.auto.planner import AutoConfig, AutoPlan, plan_for_speed

__all__ = ["AutoConfig", "AutoPlan", "plan_for_speed"]
