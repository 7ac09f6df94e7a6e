"""How many examples a property runs, as a share of the loaded hypothesis profile's count.

A property whose examples cost more than most (each one trains, compiles or shrinks a whole
network) asks for a share of the profile instead of a fixed ``max_examples``, so every profile
scales it: ``ci`` (40) gives ``examples(0.5)`` 20, ``fuzz`` (2000) gives it 1000, and
``HYPOTHESIS_MAX_EXAMPLES=N`` scales it too. A fixed ``@settings(max_examples=20)`` would run 20
examples under ``make fuzz`` as well.
"""

from __future__ import annotations

from hypothesis import settings


def examples(share: float) -> settings:
    """``@settings`` running ``share`` of the loaded profile's examples (at least one)."""
    return settings(max_examples=max(1, round(share * settings.default.max_examples)))
