"""The module that takes a converted conv's place: a grouped (or depthwise) conv, then a 1x1 conv.

It is an `nn.Sequential` of the two convs (state dict keys `<conv>.depthwise.weight` or `<conv>.grouped.weight`,
then `<conv>.pointwise.weight` / `.bias`), and it answers what code around a conv reads of it: the conv's
hyper-parameters (`in_channels`, `kernel_size`, ...), and `weight` / `bias` as the dense conv it computes (for
code that reads their dtype, device or shape, as Hugging Face's ViT does with its patch embedding's weight).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from convert.surgery.factorize import compose, standard_layout, transposed_layout
from convert.surgery.find import ConvSpec

__all__ = ["FactorizedConv"]


class FactorizedConv(nn.Sequential):
    """A conv as `first` (grouped or depthwise; transposed for a transposed conv) then `pointwise` (1x1).

    Args:
        first: the grouped conv, named "depthwise" when it has one group per input channel, else "grouped".
        pointwise: the 1x1 conv, with the original's groups and bias.
        spec: the hyper-parameters of the conv it replaces.
    """

    def __init__(self, first: nn.Module, pointwise: nn.Module, spec: ConvSpec) -> None:
        name = "depthwise" if first.groups == first.in_channels else "grouped"
        super().__init__(OrderedDict([(name, first), ("pointwise", pointwise)]))
        self.in_channels = spec.in_channels
        self.out_channels = spec.out_channels
        self.kernel_size = spec.kernel
        self.stride = spec.stride
        self.padding = spec.padding
        self.dilation = spec.dilation
        self.output_padding = spec.output_padding
        self.padding_mode = spec.padding_mode
        self.transposed = spec.transposed
        self.groups = spec.groups  # the replaced conv's (the first conv's are `self[0].groups`)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight of the conv this computes, in the replaced conv's layout (computed on each read)."""
        first, pointwise = self[0], self[1]
        weight = standard_layout(first.weight, self.transposed, first.groups)  # (G*r, C_in/G, *k)
        dense = compose(weight, pointwise.weight, first.groups, self.groups)  # (C_out, C_in/g0, *k)
        return transposed_layout(dense, self.groups) if self.transposed else dense

    @property
    def bias(self) -> torch.Tensor | None:
        return self[1].bias
