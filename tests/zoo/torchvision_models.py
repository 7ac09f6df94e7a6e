"""Every torchvision classification model, built small enough for CI (no weights, 10 classes)."""

import torch
import torchvision
from torch import nn

# Over 100M parameters: run by `make test-slow` (pytest -m slow), not in CI.
BIG = {"convnext_large", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf",
       "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2", "vgg11", "vgg11_bn", "vgg13",
       "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}
# Their architecture fixes the input resolution (position embeddings, window grids).
FULL_RESOLUTION = ("vit_", "swin", "maxvit")
# The rest run at 32x32 (CI time), but for these whose pooling needs more.
MIN_SIZE = {"alexnet": 64, "inception_v3": 96}


def names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    kwargs = {"weights": None, "num_classes": 10}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    model = torchvision.models.get_model(name, **kwargs)
    size = 224 if name.startswith(FULL_RESOLUTION) else MIN_SIZE.get(name, 32)
    return model, torch.randn(2, 3, size, size)
