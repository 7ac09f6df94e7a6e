"""Where a compressed model goes next: export (ONNX), quantization, and training frameworks.

Each integration lives in its own module and imports its framework only when used, so
``import otofx`` never needs them; a missing package raises ``otofx.MissingDependencyError``
naming it and the pip command.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from otofx.errors import MissingDependencyError


def require(module: str, package: str | None = None, purpose: str = "") -> ModuleType:
    """``importlib.import_module(module)``, or ``MissingDependencyError`` naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{purpose or 'this otofx integration'} needs the package '{package}', which is not "
            f"installed ({type(exc).__name__}: {exc}). Install it: pip install {package}"
        ) from exc
