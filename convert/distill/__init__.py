"""Knowledge distillation of the converted model with the original as teacher: config, data (+ datasets), losses,
features, state (the checkpoint), parallel (torchrun), summary (the report), trainer."""

import lazy_loader

# imported on first use, from the table in __init__.pyi (as `convert`'s own names)
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
