"""What passes and op rules share beside the meta keys (``passes.meta``): reading a module's
tensor by name, running a module in eval mode, and the two label values that are not a plain
label tensor (a tuple of them, a python size).

It imports only torch, so every pass and rule can import it without importing another pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule


def tensor_named(gm: GraphModule, name: str) -> torch.Tensor:
    """The parameter or buffer ``name`` of ``gm``."""
    module_path, _, attr = name.rpartition(".")
    return getattr(gm.get_submodule(module_path), attr)


def _plain_flag(m: torch.nn.Module) -> bool:
    """Whether setting ``m.training`` is all that ``m.train(mode)`` does to ``m`` itself (no
    ``train`` or ``__setattr__`` of its own): the flag can then be written directly."""
    cls = type(m)
    return cls.train is torch.nn.Module.train and cls.__setattr__ is torch.nn.Module.__setattr__


@contextmanager
def evaluation(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for the block; every training flag is put back afterwards.
    Where no module has its own ``train`` or ``__setattr__`` the flags are written straight into
    each module's ``__dict__`` (what ``module.eval()`` does, without ``nn.Module.__setattr__``'s
    checks, a third of this on a graph of hundreds of modules)."""
    modules = list(module.modules())
    flags = [m.training for m in modules]
    direct = all(_plain_flag(m) for m in modules)
    if direct:
        for m in modules:
            m.__dict__["training"] = False
    else:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in zip(modules, flags):
            if direct:
                m.__dict__["training"] = flag
            else:
                m.training = flag


@dataclass
class SizeDep:
    """A python number computed from tensor sizes; ``ids`` are the channels it counts."""

    ids: torch.Tensor


def label_tensors(L: Any) -> list[torch.Tensor]:
    """The label tensors inside a node's labels (a tensor, or a tuple of them)."""
    if isinstance(L, torch.Tensor):
        return [L]
    if isinstance(L, (list, tuple)):
        return [t for x in L for t in label_tensors(x)]
    if isinstance(L, dict):          # dict and ModelOutput graph outputs
        return [t for x in L.values() for t in label_tensors(x)]
    return []
