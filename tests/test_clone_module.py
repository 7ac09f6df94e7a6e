"""``passes.trace.clone_module`` gives what ``copy.deepcopy`` gives: the same values, dtypes,
layouts and aliasing, every tensor a new one. Buffers alone on their storage take a direct clone;
views, tied and shared-storage tensors keep deepcopy's sharing."""

from __future__ import annotations

import copy

import torch
from hypothesis import given
from hypothesis import strategies as st
from otofx.passes.trace import _alone, clone_module
from torch import nn


def everything(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = [(f"{name}.{k}", t) for name, m in module.named_modules(remove_duplicate=False)
           for group in (m._parameters, m._buffers) for k, t in group.items() if t is not None]
    return out


def aliasing(tensors: list[torch.Tensor]) -> list[list[bool]]:
    return [[a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for b in tensors]
            for a in tensors]


def same_as_deepcopy(model: nn.Module) -> None:
    ours, theirs = clone_module(model), copy.deepcopy(model)
    mine, ref, orig = everything(ours), everything(theirs), everything(model)
    assert [k for k, _ in mine] == [k for k, _ in ref]
    for (k, a), (_, b), (_, o) in zip(mine, ref, orig):
        assert type(a) is type(b) and a.dtype == b.dtype and a.requires_grad == b.requires_grad, k
        assert a.shape == b.shape and a.stride() == b.stride() and a.storage_offset() == b.storage_offset(), k
        assert a.untyped_storage().nbytes() == b.untyped_storage().nbytes(), k
        assert torch.equal(a, b), k
        assert a.untyped_storage().data_ptr() != o.untyped_storage().data_ptr(), k   # a copy
    assert aliasing([t for _, t in mine]) == aliasing([t for _, t in ref])


@given(st.integers(1, 4), st.booleans(), st.booleans(), st.booleans())
def test_clone_module_matches_deepcopy(blocks, share_view, tie, channels_last):
    torch.manual_seed(blocks)
    layers = []
    for _ in range(blocks):
        layers += [nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)]
    model = nn.Sequential(*layers).eval()
    model[1].running_mean.normal_()
    if share_view:            # a buffer that is a view of another: deepcopy keeps them aliased
        model[1].register_buffer("part", model[1].running_var[:2])
        model[1].register_buffer("whole", model[1].running_mean.view(2, 2))
    if tie and blocks > 1:    # one buffer object held twice
        model[3].running_var = model[1].running_var
    if channels_last:
        model[0].register_buffer("mask", torch.ones(1, 4, 2, 2).to(memory_format=torch.channels_last))
    same_as_deepcopy(model)


def test_alone_only_for_a_tensor_on_its_own_storage():
    t = torch.randn(3)
    assert _alone(t)
    v = t[1:]
    assert not _alone(t) and not _alone(v)
    del v
    assert _alone(t)
    assert not _alone(torch.randn(3, requires_grad=True))
    assert not _alone(torch.randn(4, 4).t().contiguous().t())
    assert not _alone(torch.empty(0))
