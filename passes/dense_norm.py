"""Norms that keep the dense width as their divisor: how a hidden dim shrinks exactly.

A LayerNorm or RMSNorm over ``d`` channels, ``d - d'`` of which are exactly zero, computes its
statistics from the ``d'`` others; only the divisor still counts the zeros. Shrink removes the
zero channels and keeps the divisor ``d`` (``dense``). With ``S1 = sum_kept x`` and
``S2 = sum_kept x^2`` over the normalised dims:

* **RMSNorm**: ``rms = sqrt(S2 / d + eps)``, ``y_i = x_i / rms * w_i``. A stock RMSNorm over the
  ``d'`` kept channels computes ``sqrt(S2 / d' + eps')``; with ``eps' = eps * d / d'`` that is
  ``sqrt(d / d') * rms``, so ``w'_i = w_i * sqrt(d / d')`` makes it exact
  (:func:`rescaled_rms_norm`, used for ``nn.RMSNorm`` modules with a weight and a numeric eps).
* **LayerNorm**: ``mean = S1 / d``; each removed channel contributes ``(0 - mean)^2`` to the
  variance, so ``var = (sum_kept (x - mean)^2 + (d - d') * mean^2) / d`` (the centred form,
  stable where ``S2 / d - mean^2`` would cancel). ``y_i = (x_i - mean) / sqrt(var + eps) * w_i + b_i``.
  No stock module divides by another width than its own: :class:`DenseLayerNorm` does.
* **GroupNorm with one group**: a LayerNorm over (C, H, W) with a per-channel affine, the dense
  count ``C * H * W`` taken from the dense channel count and the input's spatial size
  (:func:`dense_group_norm`).
* **mean** over a channel dim (hand-written RMSNorm, ``x.pow(2).mean(-1, keepdim=True)``):
  ``S / d``, :func:`dense_mean`.

A removed channel's own output, ``(0 - mean) / std * w_i + b_i`` or ``0 / rms * w_i``, is zero
once its weight and bias are: they belong to the channel's group (zeroed with its producers).
Float16 and bfloat16 inputs are reduced in float32, as torch's own norms do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_LOW = (torch.float16, torch.bfloat16)


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _LOW else x


def _layer_norm_stats(x: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor | None,
                      bias: torch.Tensor | None, eps: float, dense: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    xf = _wide(x)
    mean = xf.sum(dims, keepdim=True) / dense
    centred = xf - mean
    missing = dense - math.prod(shape)
    var = (centred.square().sum(dims, keepdim=True) + missing * mean.square()) / dense
    rstd = torch.rsqrt(var + eps)
    y = centred * rstd
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype), mean, rstd


def dense_layer_norm(x: torch.Tensor, normalized_shape: int | Sequence[int],
                     weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                     eps: float = 1e-5, dense: int | None = None) -> torch.Tensor:
    """``F.layer_norm`` whose mean and variance divide by ``dense`` elements (the width before
    zero channels were removed) instead of ``prod(normalized_shape)``."""
    shape = _shape(normalized_shape)
    if dense is None or dense == math.prod(shape):
        return F.layer_norm(x, shape, weight, bias, eps)
    return _layer_norm_stats(x, shape, weight, bias, eps, dense)[0]


def dense_native_layer_norm(x: torch.Tensor, normalized_shape: Sequence[int],
                            weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                            dense: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``aten.native_layer_norm`` (output, mean, rstd) with the dense divisor."""
    return _layer_norm_stats(x, _shape(normalized_shape), weight, bias, eps, dense)


def dense_rms_norm(x: torch.Tensor, normalized_shape: int | Sequence[int],
                   weight: torch.Tensor | None = None, eps: float | None = None,
                   dense: int | None = None) -> torch.Tensor:
    """``F.rms_norm`` whose mean square divides by ``dense`` elements."""
    shape = _shape(normalized_shape)
    if dense is None or dense == math.prod(shape):
        return F.rms_norm(x, shape, weight, eps)
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    xf = _wide(x)
    y = xf * torch.rsqrt(xf.square().sum(dims, keepdim=True) / dense + eps)
    if weight is not None:
        y = y * weight
    return y.to(x.dtype)


def dense_group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, eps: float = 1e-5,
                     dense_channels: int | None = None) -> torch.Tensor:
    """``F.group_norm`` with one group whose statistics divide by ``dense_channels`` times the
    spatial size (the channel count before zero channels were removed)."""
    if num_groups != 1 or dense_channels is None or dense_channels == x.shape[1]:
        return F.group_norm(x, num_groups, weight, bias, eps)
    y = _layer_norm_stats(x, tuple(x.shape[1:]), None, None, eps,
                          dense_channels * math.prod(x.shape[2:]))[0]
    affine = (-1,) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(affine)
    if bias is not None:
        y = y + bias.view(affine)
    return y


def dense_mean(x: torch.Tensor, dim: int | Sequence[int], keepdim: bool = False, dense: int = 1,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x.mean(dim, keepdim)`` as ``x.sum(dim, keepdim) / dense``: the mean over the dense
    width of a dim whose removed (zero) positions are gone."""
    out_dtype = dtype or x.dtype
    acc = torch.float32 if out_dtype in _LOW else out_dtype
    return (x.sum(dim, keepdim=keepdim, dtype=acc) / dense).to(out_dtype)


def rescaled_rms_norm(module: nn.RMSNorm, normalized_shape: tuple[int, ...], dense: int) -> None:
    """Make a stock ``nn.RMSNorm`` (numeric eps, with a weight) already sliced to
    ``normalized_shape`` compute the RMSNorm of the ``dense``-wide input: weight times
    ``sqrt(dense / kept)``, eps times ``dense / kept`` (the algebra above)."""
    ratio = dense / math.prod(normalized_shape)
    w = module.weight
    with torch.no_grad():
        scaled = (w.detach().double() * math.sqrt(ratio)).to(w.dtype)
    module.weight = nn.Parameter(scaled, requires_grad=w.requires_grad)
    module.eps = module.eps * ratio
    module.normalized_shape = tuple(normalized_shape)


class DenseLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over ``normalized_shape`` whose statistics divide by ``dense`` elements
    (:func:`dense_layer_norm`); what shrink puts where a LayerNorm lost zero channels."""

    def __init__(self, normalized_shape: int | Sequence[int], dense: int, eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        self.dense = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, self.dense)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dense={self.dense}"


class DenseRMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` whose mean square divides by ``dense`` elements, for the RMSNorms a
    rescaled stock one cannot replace (no weight, or ``eps=None``: torch picks it per dtype)."""

    def __init__(self, normalized_shape: int | Sequence[int], dense: int, eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)
        self.dense = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_rms_norm(x, self.normalized_shape, self.weight, self.eps, self.dense)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dense={self.dense}"


class DenseGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with one group whose statistics count ``dense_channels`` channels
    (:func:`dense_group_norm`)."""

    def __init__(self, num_channels: int, dense_channels: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(1, num_channels, eps, affine, device, dtype)
        self.dense_channels = dense_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_group_norm(x, 1, self.weight, self.bias, self.eps, self.dense_channels)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dense_channels={self.dense_channels}"
