"""The latency-aware planner (`--to auto`): candidates, latency measurement and cache, search, planner."""

import lazy_loader

# imported on first use, from the table in __init__.pyi (as `convert`'s own names)
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
