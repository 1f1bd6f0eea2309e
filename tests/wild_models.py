"""Models users bring from other libraries (timm, Hugging Face transformers, segmentation-models-pytorch, MONAI),
each built by its library's own factory, for tests/test_zoo_wild.py.

Random weights, nothing downloaded (HF_HUB_OFFLINE is set here, before any of these libraries is imported; timm
models take `pretrained=False`, transformers models a small config, smp models `encoder_weights=None`), the
smallest inputs each model accepts, and train mode: the mode every freshly built module is in, so the mode a
model straight from its factory reaches the tool in. The libraries are imported when a model is built, not when
this registry is, so that collecting the tests costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from zoo_models import ZooModel

__all__ = ["BATCH", "CHECKS", "EXPORTED", "ISSUE_MODELS", "OTHER_BATCH", "WILD", "WildModel"]

os.environ["HF_HUB_OFFLINE"] = "1"  # a Hugging Face config or timm model that tried to download would fail, loudly

BATCH = 2  # the example inputs' batch (BatchNorm in train mode needs more than one value per channel)
OTHER_BATCH = 3  # the second batch size each model is checked at, after converting at BATCH
# The checks a model may opt out of (WildModel.reasons), each with what it checks.
CHECKS = {"train": "the converted model equals the original in train mode"}


@dataclasses.dataclass(frozen=True)
class WildModel:
    """How to build one model, what to feed it, and what the tool must leave alone in it."""

    library: str  # "timm" | "transformers" | "smp" | "monai"
    build: Callable[[], nn.Module]  # the library's factory: random weights, train mode
    shape: tuple[int, ...]  # one example input, batch excluded
    slow: bool = False  # more than a few seconds for the whole check on the 2-core machine
    must_skip: tuple[str, ...] = ()  # class names of conv subclasses that are not standard convs (never converted)
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)  # check (CHECKS) -> why it does not apply

    def __post_init__(self) -> None:
        unknown = set(self.reasons) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}: use {sorted(CHECKS)}")
        object.__setattr__(self, "reasons", MappingProxyType(dict(self.reasons)))

    def model(self) -> nn.Module:
        """The model in train mode, random weights (seeded), and BatchNorm statistics measured on random data
        (as a trained model has them: see ZooModel.model)."""
        return ZooModel(self.build, (BATCH, *self.shape)).model().train()

    def inputs(self, batch: int = BATCH) -> tuple[torch.Tensor]:
        return (torch.randn((batch, *self.shape), generator=torch.Generator().manual_seed(batch)),)


def _factory(module: str, name: str, *args: Any, **kwargs: Any) -> Callable[[], nn.Module]:
    """`module.name(*args, **kwargs)`, imported when called."""
    return lambda: getattr(importlib.import_module(module), name)(*args, **kwargs)


def _timm(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return _factory("timm", "create_model", name, pretrained=False, **kwargs)


def _hf(model: str, config: str, **sizes: Any) -> Callable[[], nn.Module]:
    """`transformers.<model>(transformers.<config>(**sizes))`: a tiny configuration, random weights."""

    def build() -> nn.Module:
        transformers = importlib.import_module("transformers")
        return getattr(transformers, model)(getattr(transformers, config)(**sizes))

    return build


def _smp(arch: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return _factory("segmentation_models_pytorch", arch, encoder_weights=None, classes=3, **kwargs)


def _monai(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    return _factory("monai.networks.nets", name, **kwargs)


IMAGE = (3, 64, 64)
SMALL_IMAGE = (3, 32, 32)
VOLUME = (1, 32, 32, 32)  # C, D, H, W
WAVEFORM = (800,)  # 50 ms at 16 kHz
STD_CONV = "the weight is standardized in forward: not a standard conv, converting its raw weight changes the model"
# SpecAugment (on in train mode) draws its masks from numpy's global RNG, which no torch seed fixes: two train-mode
# runs of the same model differ. Off here so that train mode can be compared at all.
NO_SPEC_AUGMENT = {"mask_time_prob": 0.0, "mask_feature_prob": 0.0}
TINY_AUDIO = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (16, 16, 16),
    "conv_stride": (5, 2, 2),
    "conv_kernel": (10, 3, 3),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    **NO_SPEC_AUGMENT,
}
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _timm_models() -> dict[str, WildModel]:
    image = {
        # timm's test_* models: every family's smallest configuration, made for tests
        "test_resnet": {},
        "test_byobnet": {},
        "test_convnext": {},
        "test_efficientnet": {},
        "test_efficientnet_gn": {},
        "test_mambaout": {},
        "test_vit": {"img_size": 64},
        "test_coatnet": {"img_size": 64},
        "test_maxvit": {"img_size": 64},
        # BatchNormAct2d (timm's norm + activation module, whose forward reads self.training)
        "repvgg_a0": {},
        "darknet17": {},
        "cs3darknet_s": {},
        "regnetx_002": {},
        "resnet10t": {},
        "resnetv2_18": {},
        "resnest14d": {},
        "skresnet18": {},
        "gernet_s": {},
        "ese_vovnet19b_slim_dw": {},
        "dla46_c": {},
        "hrnet_w18_small": {},
        "mobilenetv4_conv_small_050": {},
        "hgnetv2_b0": {},
        # "same" padding computed at run time (Conv2dSame)
        "tf_efficientnet_b0": {},
        "tf_mobilenetv3_small_minimal_100": {},
        # conv / attention hybrids
        "efficientformerv2_s0": {"img_size": 64},
        "fastvit_t8": {},
        "levit_128s": {"img_size": 64},
        "mobilevit_xxs": {},
        "mobilevitv2_050": {},
        "edgenext_xx_small": {},
        "efficientvit_b0": {},
        "repvit_m0_9": {},
        "inception_next_atto": {},
        "starnet_s050": {},
    }
    models = {name: WildModel("timm", _timm(name, **kwargs), IMAGE) for name, kwargs in image.items()}
    # weight standardization (StdConv2d, ScaledStdConv2d): the tool must skip these convs
    models["test_nfnet"] = WildModel("timm", _timm("test_nfnet"), IMAGE, must_skip=("ScaledStdConv2d",))
    models["resnetv2_50x1_bit"] = WildModel("timm", _timm("resnetv2_50x1_bit"), IMAGE, must_skip=("StdConv2d",))
    return models


def _hf_models() -> dict[str, WildModel]:
    stages = {"hidden_sizes": [16, 32], "depths": [1, 1]}
    return {
        "hf_resnet": WildModel(
            "transformers",
            _hf(
                "ResNetForImageClassification",
                "ResNetConfig",
                embedding_size=16,
                layer_type="basic",
                num_labels=10,
                **stages,
            ),
            IMAGE,
        ),
        "hf_convnext": WildModel("transformers", _hf("ConvNextModel", "ConvNextConfig", num_stages=2, **stages), IMAGE),
        "hf_regnet": WildModel(
            "transformers", _hf("RegNetModel", "RegNetConfig", embedding_size=16, groups_width=8, **stages), IMAGE
        ),
        "hf_mobilenet_v2": WildModel(  # TF-style "same" padding computed in forward
            "transformers", _hf("MobileNetV2Model", "MobileNetV2Config", depth_multiplier=0.35, image_size=64), IMAGE
        ),
        "hf_mobilevit": WildModel(
            "transformers",
            _hf(
                "MobileViTModel",
                "MobileViTConfig",
                image_size=64,
                hidden_sizes=[16, 24, 32],
                neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            ),
            IMAGE,
        ),
        "hf_vit": WildModel(
            "transformers", _hf("ViTModel", "ViTConfig", image_size=32, patch_size=8, **TINY_VIT), SMALL_IMAGE
        ),
        "hf_swin": WildModel(
            "transformers",
            _hf(
                "SwinModel",
                "SwinConfig",
                image_size=32,
                patch_size=4,
                embed_dim=16,
                depths=[1, 1],
                num_heads=[1, 2],
                window_size=4,
            ),
            SMALL_IMAGE,
        ),
        "hf_segformer": WildModel(
            "transformers",
            _hf(
                "SegformerForSemanticSegmentation",
                "SegformerConfig",
                num_encoder_blocks=2,
                depths=[1, 1],
                sr_ratios=[2, 1],
                hidden_sizes=[16, 32],
                num_attention_heads=[1, 2],
                decoder_hidden_size=32,
                num_labels=3,
            ),
            IMAGE,
        ),
        "hf_wav2vec2": WildModel("transformers", _hf("Wav2Vec2Model", "Wav2Vec2Config", **TINY_AUDIO), WAVEFORM),
        "hf_hubert": WildModel("transformers", _hf("HubertModel", "HubertConfig", **TINY_AUDIO), WAVEFORM),
        "hf_whisper_encoder": WildModel(  # two Conv1d over log-mel features
            "transformers",
            _hf(
                "WhisperForAudioClassification",
                "WhisperConfig",
                num_mel_bins=16,
                d_model=32,
                encoder_layers=1,
                encoder_attention_heads=2,
                encoder_ffn_dim=64,
                max_source_positions=16,
                num_labels=4,
            ),
            (16, 32),  # mel bins, frames (= 2 x max_source_positions: Whisper's length is fixed)
        ),
    }


def _smp_models() -> dict[str, WildModel]:
    return {
        "smp_unet_scse": WildModel("smp", _smp("Unet", encoder_name="resnet18", decoder_attention_type="scse"), IMAGE),
        "smp_deeplabv3plus": WildModel("smp", _smp("DeepLabV3Plus", encoder_name="resnet18"), IMAGE),
        "smp_fpn_efficientnet": WildModel("smp", _smp("FPN", encoder_name="efficientnet-b0"), IMAGE),
        "smp_pspnet_mobilenet": WildModel("smp", _smp("PSPNet", encoder_name="mobilenet_v2"), IMAGE),
        "smp_segformer": WildModel("smp", _smp("Segformer", encoder_name="mit_b0"), IMAGE),
    }


def _monai_models() -> dict[str, WildModel]:
    unet = {"in_channels": 1, "out_channels": 2, "channels": (8, 16, 32), "strides": (2, 2)}
    return {
        "monai_unet3d": WildModel("monai", _monai("UNet", spatial_dims=3, num_res_units=1, **unet), VOLUME),
        "monai_attention_unet2d": WildModel(
            "monai", _monai("AttentionUnet", spatial_dims=2, **{**unet, "in_channels": 3}), IMAGE
        ),
        "monai_segresnet3d": WildModel(
            "monai",
            _monai("SegResNet", spatial_dims=3, init_filters=8, blocks_down=(1, 2, 2), blocks_up=(1, 1)),
            VOLUME,
        ),
        "monai_dynunet3d": WildModel(
            "monai",
            _monai(
                "DynUNet",
                spatial_dims=3,
                in_channels=1,
                out_channels=2,
                kernel_size=[3, 3, 3],
                strides=[1, 2, 2],
                upsample_kernel_size=[2, 2],
                filters=[8, 16, 32],
                res_block=True,
            ),
            VOLUME,
        ),
        "monai_unetr": WildModel(
            "monai",
            _monai(
                "UNETR",
                in_channels=1,
                out_channels=2,
                img_size=32,
                feature_size=8,
                hidden_size=48,
                mlp_dim=96,
                num_heads=4,
            ),
            VOLUME,
        ),
        "monai_basic_unet2d": WildModel(
            "monai", _monai("BasicUNet", spatial_dims=2, in_channels=3, features=(8, 8, 16, 32, 64, 8)), IMAGE
        ),
    }


WILD: dict[str, WildModel] = {**_timm_models(), **_hf_models(), **_smp_models(), **_monai_models()}
# The models the zoo test exports to ONNX and checks with ONNX Runtime. An export costs 3-40 s, most of a model's
# check, so the zoo exports one model of each kind of graph (CNN, ConvNeXt, GroupNorm, ViT, conv/attention hybrid,
# BatchNorm1d attention, run-time "same" padding, Hugging Face vision and audio, dilated ASPP, 2-D and 3-D U-Nets);
# benchmarks/wild_coverage.py exports every model.
EXPORTED = frozenset(
    {
        "test_resnet",
        "test_convnext",
        "test_efficientnet_gn",
        "test_vit",
        "test_coatnet",
        "levit_128s",
        "tf_efficientnet_b0",
        "hf_resnet",
        "hf_wav2vec2",
        "smp_deeplabv3plus",
        "monai_unet3d",
        "monai_attention_unet2d",
    }
)
# Models issue 12 names that only its regression tests run (the zoo holds a smaller one of the family).
ISSUE_MODELS: dict[str, WildModel] = {"darknet53": WildModel("timm", _timm("darknet53"), IMAGE, slow=True)}
