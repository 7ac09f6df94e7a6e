"""The base step through torch's fused multi-tensor kernels (``torch._fused_sgd_``,
``torch._fused_adam_``, ``torch._fused_adamw_``: what ``torch.optim.SGD/Adam/AdamW(fused=True)``
run), for the parameters that take the plain base step in an otofx step.

One call updates the state and the parameter of every eligible tensor in a single pass over each
(torch's default single-tensor SGD makes three: ``buf.mul_``, ``buf.add_``, ``p.add_``; its Adam
about ten), so the base part of a step costs no more than torch's fastest step
(``benchmarks.optimizer_overhead`` has the side-by-side numbers, ``benchmarks/RESULTS.md`` the
latest). The arithmetic is torch's fused kernel's; it equals the single-tensor step to float
rounding.

``eligible`` says which tensors a kernel takes: a device type torch has fused kernels for, a
floating dtype, dense gradients of the same dtype, contiguous parameter and gradient, and for Adam
moments of the parameter's dtype (half-precision parameters keep float32 moments here, which the
kernel does not take: they go one at a time).
"""

from __future__ import annotations

import torch

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _devices() -> tuple[str, ...]:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:       # an older torch: none
        return ()
    kernels = ("_fused_sgd_", "_fused_adam_", "_fused_adamw_")
    return tuple(_get_fused_kernels_supported_devices()) if all(hasattr(torch, k) for k in kernels) \
        else ()


DEVICES = _devices()


def eligible(p: torch.Tensor, state: dict, variant: str) -> bool:
    g = p.grad
    if p.device.type not in DEVICES or p.dtype not in FLOATS or g is None or g.is_sparse \
            or g.dtype != p.dtype or g.device != p.device or not (p.is_contiguous() and g.is_contiguous()):
        return False
    if variant == "sgd":
        buf = state.get("momentum_buffer")
        return buf is None or (buf.dtype == p.dtype and buf.is_contiguous())
    m = state.get("exp_avg")
    return p.dtype in (torch.float32, torch.float64) and (m is None or m.dtype == p.dtype)


def step(params: list[torch.Tensor], states: list[dict], group: dict, variant: str, step_index: int
         ) -> None:
    """The base step of ``params`` (all eligible, of one device and dtype; ``states`` their
    optimizer states, created here on a first step) with ``group``'s hyper-parameters;
    ``step_index`` counts the steps taken before this one (Adam's bias correction)."""
    if not params:
        return
    grads = [p.grad for p in params]
    lr, wd = group["lr"], group["weight_decay"]
    if variant == "sgd":
        momentum = group["momentum"]
        bufs: list[torch.Tensor] = []
        first = False
        if momentum:
            first = any("momentum_buffer" not in s for s in states)
            if first and not all("momentum_buffer" not in s for s in states):
                new = [i for i, s in enumerate(states) if "momentum_buffer" not in s]   # split
                old = [i for i in range(len(params)) if i not in set(new)]
                for part in (old, new):
                    step([params[i] for i in part], [states[i] for i in part], group, variant,
                         step_index)
                return
            if first:
                for p, s in zip(params, states):
                    s["momentum_buffer"] = torch.empty_like(p)   # the kernel sets it to the grad
            bufs = [s["momentum_buffer"] for s in states]
        torch._fused_sgd_(params, grads, bufs, weight_decay=wd, momentum=momentum, lr=lr,
                          dampening=0.0, nesterov=False, maximize=False, is_first_step=first)
        return
    kernel = torch._fused_adamw_ if variant == "adamw" else torch._fused_adam_
    _adam(kernel, params, grads, states, group, step_index, lr, wd)


def _adam(kernel, tensors: list[torch.Tensor], grads: list[torch.Tensor], states: list[dict],
          group: dict, step_index: int, lr: float, wd: float) -> None:
    """One call of torch's fused Adam/AdamW ``kernel`` stepping ``tensors`` with ``grads`` and
    the moments in ``states`` (created here, zero, on a first step); ``step_index`` counts the
    steps taken before this one (Adam's bias correction)."""
    for x, s in zip(tensors, states):
        if "exp_avg" not in s:
            s["exp_avg"] = torch.zeros_like(x)
            s["exp_avg_sq"] = torch.zeros_like(x)
    t = torch.full((), float(step_index + 1), dtype=torch.float32, device=tensors[0].device)
    b1, b2 = group["betas"]
    kernel(tensors, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
           [t] * len(tensors), amsgrad=False, lr=lr, beta1=b1, beta2=b2, weight_decay=wd,
           eps=group["eps"], maximize=False)


def adam_directions(params: list[torch.Tensor], states: list[dict], group: dict, variant: str,
                    step_index: int, scratch: list[torch.Tensor]) -> list[torch.Tensor]:
    """Adam's/AdamW's update direction ``m^ / (sqrt(v^) + eps)`` of each of ``params`` (all
    eligible, of one device and dtype), written into ``scratch`` (one buffer per parameter,
    its shape): torch's fused kernel steps a zero tensor with ``lr = -1``, so the moments advance
    and the direction is materialised in one pass over each tensor (the single-tensor arithmetic
    takes about seven: ``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, a division, ``add_``, the
    division of ``m`` by the denominator). Adam's L2 term enters the gradient here
    (``g + weight_decay * x``); AdamW's decoupled decay is the caller's (``Direction.decay``).
    Moments and direction equal the single-tensor arithmetic's to float rounding."""
    grads = [p.grad for p in params]
    wd = group["weight_decay"]
    if variant == "adam" and wd:
        grads = torch._foreach_add(grads, params, alpha=wd)
    torch._foreach_zero_(scratch)
    _adam(torch._fused_adam_, scratch, grads, states, group, step_index, -1.0, 0.0)
    return scratch
