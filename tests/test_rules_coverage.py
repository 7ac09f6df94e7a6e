"""One small model per op family the core rules cover: each must shrink exactly and really shrink."""

import pytest
import torch
import torch.nn.functional as F
from helpers import roundtrip
from torch import nn


class ConvTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.b = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.up(F.relu(self.a(x)))))


class Conv1dAnd3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.p1 = nn.Conv1d(3, 8, 3, padding=1), nn.PReLU(8)
        self.c3, self.n3 = nn.Conv3d(1, 6, 3, padding=1), nn.InstanceNorm3d(6, affine=True)
        self.head = nn.Linear(8 + 6, 2)

    def forward(self, x):
        a = self.p1(self.c1(x)).amax(dim=2)
        b = F.relu(self.n3(self.c3(x[:, None, :, :, None]))).mean((2, 3, 4))
        return self.head(torch.cat([a, b], dim=1))


class ChannelsLast(nn.Module):
    """ConvNeXt-style: permute to channels-last, linear layers over C, permute back."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return self.out(x + y)


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, ids):
        h = F.relu(self.fc1(self.emb(ids)))
        return self.fc2(h.sum(dim=1))


class UpsamplePad(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3)
        self.b = nn.Conv2d(6, 2, 3)

    def forward(self, x):
        y = F.interpolate(F.relu(self.a(x)), scale_factor=2, mode="bilinear")
        y = F.pad(F.max_pool2d(y, 2), (1, 1, 1, 1))
        return self.b(nn.functional.hardswish(y))


class MLPFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Dropout(0.1),
                                nn.Linear(16, 5))

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)))


class FunctionalConv(nn.Module):
    """Parameters used through F.conv2d / F.linear / F.group_norm with get_attr weights."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.gw, self.gb = nn.Parameter(torch.ones(8)), nn.Parameter(torch.zeros(8))
        self.dw = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.w2 = nn.Parameter(torch.randn(4, 8) * 0.3)

    def forward(self, x):
        y = F.conv2d(x, self.w1, self.b1, padding=1)
        y = F.relu(F.group_norm(y, 4, self.gw, self.gb))
        y = F.conv2d(y, self.dw, None, 1, 1, 1, 8)
        return F.linear(y.mean((2, 3)), self.w2)


CASES = {
    "conv_transpose": (ConvTranspose, (2, 3, 4, 4)),
    "conv1d_conv3d_prelu_instancenorm": (Conv1dAnd3d, (2, 3, 5)),
    "channels_last_linear": (ChannelsLast, (2, 3, 5, 5)),
    "mlp_flatten_sequential": (MLPFlatten, (2, 1, 8, 8)),
    "upsample_pool_pad": (UpsamplePad, (2, 3, 7, 7)),
    "functional_params": (FunctionalConv, (2, 3, 5, 5)),
}


def _check(model, x, affine):
    gm, analysis, small = roundtrip(model, x, 0.5, seed=1, affine=affine)
    assert analysis.prunable, analysis.report()
    return gm, analysis, small


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_op_family_shrinks_exactly(case, affine):
    torch.manual_seed(0)
    cls, shape = CASES[case]
    gm, analysis, small = _check(cls(), torch.randn(shape), affine)
    if affine:
        assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in gm.parameters())


def test_embedding_width_is_a_prunable_group():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (2, 5))
    gm, analysis, small = _check(Embeddings(), ids, affine=True)
    group = next(g for g in analysis.groups if g.name == "emb")
    assert group.prunable and small.emb.embedding_dim == 4 == small.fc1.in_features
