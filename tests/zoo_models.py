"""The torchvision models the coverage suite (tests/test_zoo.py) and its table (benchmarks/coverage.py) run.

Random weights (nothing is downloaded), the smallest inputs each model accepts, one batch. Detection models
contribute their backbone (with FPN where they have one): the feature extractor, whose convs are the ones
to convert; their heads post-process boxes in Python.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models
from torchvision.models import detection, segmentation, video


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """How to build one model and what to feed it."""

    build: Callable[[], nn.Module]  # random weights
    shape: tuple[int, ...]  # the example input
    slow: bool = False  # more than a few seconds for the whole check on the 2-core machine

    def model(self) -> nn.Module:
        """The model in eval mode, random weights (seeded), and BatchNorm statistics measured on random data.

        With BatchNorm's initial statistics (mean 0, variance 1) activations shrink or grow layer after layer
        and the output can end up as little more than the classifier's bias, whatever the convs compute,
        which would make "converted equals original" vacuous. Measured statistics normalize each layer, as
        in a trained model.
        """
        torch.manual_seed(0)
        model = self.build()
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # noqa: SLF001
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the batches seen: here, one batch
        if norms:
            with torch.no_grad():
                model.train()(torch.randn(CALIBRATION_BATCH, *self.shape[1:]))
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        return model.eval()

    def inputs(self) -> tuple[torch.Tensor]:
        return (torch.randn(self.shape, generator=torch.Generator().manual_seed(0)),)


def _no_weights(factory: Callable[..., nn.Module], **kwargs: object) -> Callable[[], nn.Module]:
    return lambda: factory(weights=None, **kwargs)


def _dense_prediction(factory: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    return lambda: factory(weights=None, weights_backbone=None)


def _backbone(factory: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    return lambda: factory(weights=None, weights_backbone=None).backbone


CALIBRATION_BATCH = 4
IMAGE = (1, 3, 64, 64)
CLIP = (1, 3, 4, 32, 32)  # N, C, T, H, W

ZOO: dict[str, ZooModel] = {
    "resnet18": ZooModel(_no_weights(models.resnet18), IMAGE),
    "resnet50": ZooModel(_no_weights(models.resnet50), IMAGE, slow=True),
    "resnext50_32x4d": ZooModel(_no_weights(models.resnext50_32x4d), IMAGE, slow=True),
    "wide_resnet50_2": ZooModel(_no_weights(models.wide_resnet50_2), IMAGE, slow=True),
    "vgg11_bn": ZooModel(_no_weights(models.vgg11_bn), (1, 3, 32, 32), slow=True),
    "densenet121": ZooModel(_no_weights(models.densenet121), IMAGE, slow=True),
    "googlenet": ZooModel(_no_weights(models.googlenet, init_weights=True), IMAGE, slow=True),
    "inception_v3": ZooModel(  # its auxiliary head (train mode only) needs inputs larger than 75x75
        _no_weights(models.inception_v3, init_weights=True, aux_logits=False), (1, 3, 75, 75), slow=True
    ),
    "squeezenet1_0": ZooModel(_no_weights(models.squeezenet1_0), IMAGE),
    "mnasnet0_5": ZooModel(_no_weights(models.mnasnet0_5), IMAGE),
    "mobilenet_v2": ZooModel(_no_weights(models.mobilenet_v2), IMAGE),
    "mobilenet_v3_small": ZooModel(_no_weights(models.mobilenet_v3_small), IMAGE),
    "efficientnet_b0": ZooModel(_no_weights(models.efficientnet_b0), IMAGE, slow=True),
    "efficientnet_v2_s": ZooModel(_no_weights(models.efficientnet_v2_s), IMAGE, slow=True),
    "regnet_y_400mf": ZooModel(_no_weights(models.regnet_y_400mf), IMAGE, slow=True),
    "convnext_tiny": ZooModel(_no_weights(models.convnext_tiny), IMAGE, slow=True),
    "shufflenet_v2_x0_5": ZooModel(_no_weights(models.shufflenet_v2_x0_5), IMAGE),
    "fcn_resnet50": ZooModel(_dense_prediction(segmentation.fcn_resnet50), IMAGE, slow=True),
    "deeplabv3_resnet50": ZooModel(_dense_prediction(segmentation.deeplabv3_resnet50), IMAGE, slow=True),
    "lraspp_mobilenet_v3_large": ZooModel(_dense_prediction(segmentation.lraspp_mobilenet_v3_large), IMAGE),
    "r3d_18": ZooModel(_no_weights(video.r3d_18), CLIP, slow=True),
    "mc3_18": ZooModel(_no_weights(video.mc3_18), CLIP, slow=True),
    "r2plus1d_18": ZooModel(_no_weights(video.r2plus1d_18), CLIP, slow=True),
    "fasterrcnn_resnet50_fpn.backbone": ZooModel(_backbone(detection.fasterrcnn_resnet50_fpn), IMAGE, slow=True),
    "fasterrcnn_mobilenet_v3_large_fpn.backbone": ZooModel(
        _backbone(detection.fasterrcnn_mobilenet_v3_large_fpn), IMAGE
    ),
    "retinanet_resnet50_fpn.backbone": ZooModel(_backbone(detection.retinanet_resnet50_fpn), IMAGE, slow=True),
    "ssd300_vgg16.backbone": ZooModel(_backbone(detection.ssd300_vgg16), (1, 3, 268, 268), slow=True),
    "ssdlite320_mobilenet_v3_large.backbone": ZooModel(_backbone(detection.ssdlite320_mobilenet_v3_large), IMAGE),
}
