"""Every torchvision classification model, built small enough for CI (no weights, 10 classes)."""

import torch
import torchvision
from torch import nn

# Over 100M parameters: run by `make test-slow` (pytest -m slow), not in CI.
BIG = {"convnext_large", "efficientnet_v2_l", "regnet_x_32gf", "regnet_y_32gf", "regnet_y_128gf",
       "vit_h_14", "vit_l_16", "vit_l_32", "wide_resnet101_2"}
# The VGGs' 4096-wide classifier holds ~120M of their parameters; CI builds them with the same
# classifier at this width (the same layers, the same pruning problem: 25088 -> W -> W -> 10).
VGG_CLASSIFIER = 256
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
    if name.startswith("vgg"):
        model.classifier = _narrow_vgg_classifier(model.classifier, VGG_CLASSIFIER)
    size = 224 if name.startswith(FULL_RESOLUTION) else MIN_SIZE.get(name, 32)
    return model, torch.randn(2, 3, size, size)


def _narrow_vgg_classifier(classifier: nn.Sequential, width: int) -> nn.Sequential:
    """torchvision's VGG classifier (linear, ReLU, dropout, linear, ReLU, dropout, linear) with
    ``width`` hidden features instead of 4096."""
    first, last = classifier[0], classifier[-1]
    return nn.Sequential(nn.Linear(first.in_features, width), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(width, width), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(width, last.out_features))
