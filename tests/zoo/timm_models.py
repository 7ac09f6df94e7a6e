"""timm models, built small enough for CI: no weights, 10 classes, small images.

``MODELS`` maps a timm model name to (image size, extra ``create_model`` kwargs). Transformers get
``img_size`` so position embeddings and attention biases match the small image; window models get
windows that divide their feature maps. ``leaf_modules()`` is timm's own list of modules that
``torch.fx`` must not trace into (``timm.layers.get_notrace_modules``).
"""

from __future__ import annotations

import torch
from torch import nn

MODELS: dict[str, tuple[int, dict]] = {
    # vision transformers
    "vit_tiny_patch16_224": (32, {"img_size": 32}),
    "deit_tiny_patch16_224": (32, {"img_size": 32}),
    "deit_tiny_distilled_patch16_224": (32, {"img_size": 32}),
    "cait_xxs24_224": (32, {"img_size": 32, "depth": 4}),
    "pit_ti_224": (64, {"img_size": 64}),
    "levit_128s": (64, {"img_size": 64}),
    "swin_tiny_patch4_window7_224": (64, {"img_size": 64, "window_size": 4}),
    "pvt_v2_b0": (64, {}),
    "twins_svt_small": (64, {"img_size": 64}),
    "coat_lite_tiny": (64, {"img_size": 64}),
    "xcit_nano_12_p16_224": (32, {"img_size": 32}),
    "mobilevit_xxs": (64, {}),
    "efficientformer_l1": (224, {}),  # attention biases fix 7x7 tokens
    "efficientformerv2_s0": (64, {"img_size": 64}),
    # MLP and metaformer
    "mixer_s32_224": (64, {"img_size": 64}),
    "resmlp_12_224": (32, {"img_size": 32}),
    "poolformer_s12": (32, {}),
    "poolformerv2_s12": (32, {}),
    "caformer_s18": (64, {}),
    # convnets
    "convnext_atto": (32, {}),
    "efficientnet_b0": (32, {}),
    "mobilenetv3_small_100": (32, {}),
    "resnet18d": (32, {}),
    "resnet50d": (32, {}),
    "seresnext26d_32x4d": (32, {}),
    "resnetv2_50": (32, {}),
    "regnetx_002": (32, {}),
    "regnety_002": (32, {}),
    "ghostnet_100": (32, {}),
    "rexnet_100": (32, {}),
    "densenet121": (32, {}),
}


def names() -> list[str]:
    return list(MODELS)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    import timm
    size, kwargs = MODELS[name]
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return model.eval(), torch.randn(2, 3, size, size)


def leaf_modules() -> list[type[nn.Module]]:
    """timm's no-trace modules (kept opaque when fx traces a timm model)."""
    from timm.layers import get_notrace_modules
    return list(get_notrace_modules())


# Models whose attention (linear qkv or q + kv, then proj) must lose whole heads at 30%.
HEADS = {"vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "cait_xxs24_224",
         "pit_ti_224", "swin_tiny_patch4_window7_224", "pvt_v2_b0", "twins_svt_small", "coat_lite_tiny",
         "xcit_nano_12_p16_224", "efficientformer_l1", "caformer_s18"}

# Attention otofx cannot prove head-separable: its heads stay, pinned, while the rest of the model
# shrinks exactly. Each maps to the reason (a substring of some pinned head group's reasons) that the
# test checks; the comment says what blocks it.
PINNED_HEADS: dict[str, str] = {
    # the relative position bias, relative_position_bias_table[relative_position_index] (a gather of
    # a (window cells, heads) parameter), is added to the scores; also no rule for torch.roll
    "swin_tiny_patch4_window7_224": "joined with data that carries no channel",
    # GlobalSubSampleAttn's q.reshape(B, N, num_heads, C // num_heads) takes C from x.shape, so its
    # heads form one group of size 1; LocallyGroupedAttn is a timm no-trace leaf with no rule
    "twins_svt_small": "a single channel: removing it would leave the dim empty",
    # TalkingHeadAttn: proj_l / proj_w linears mix the head dim between q-k and v-o
    "cait_xxs24_224": "joined with data that carries no channel",
    # FactorAttnConvRelPosEnc: k.softmax(2)^T @ v and q @ (...) multiply heads with head-free data
    "coat_lite_tiny": "a product of channels with data that has no channel",
    # XCA: q and k normalised over tokens; a per-head temperature (heads, 1, 1) scales the scores
    "xcit_nano_12_p16_224": "no rule for function torch.nn.functional.normalize",
    # the per-head attention_biases[:, attention_bias_idxs] added to the scores
    "efficientformer_l1": "joined with data that carries no channel",
    "levit_128s": "joined with data that carries no channel",
    "efficientformerv2_s0": "joined with data that carries no channel",
}

# Attention inside a timm no-trace leaf with no rule: the leaf pins the channels it reads, named.
OPAQUE_ATTENTION: dict[str, str] = {
    "mobilevit_xxs": "no rule for MobileVitBlock module",
}

# Models whose last stage's width (the residual stream of the transformers, through every LayerNorm
# over it, or PoolFormer's one-group GroupNorms) must shrink at 30%: the group the classifier's
# input columns consume is prunable.
HIDDEN = {"vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "cait_xxs24_224",
          "pit_ti_224", "pvt_v2_b0", "mobilevit_xxs", "efficientformer_l1", "efficientformerv2_s0",
          "convnext_atto", "poolformer_s12", "poolformerv2_s12"}


def classifier_weights(model: nn.Module) -> set[str]:
    """Names of the classifier weights (a distilled model has two heads)."""
    found = model.get_classifier()
    heads = found if isinstance(found, tuple) else (found,)
    heads = [getattr(h, "fc", h) for h in heads]
    return {n for n, p in model.named_parameters() if any(p is getattr(h, "weight", None) for h in heads)}
