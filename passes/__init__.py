"""otofx's graph passes (``otofx.passes``): trace, shapes, channels, groups, erasable, shrink.

Each pass is one file and one job; passes talk only through ``node.meta`` and ``gm.meta`` under
the ``"otofx.*"`` keys of ``meta`` (what each holds, who writes and reads it). Op knowledge lives
in ``registry.RULES`` (rules in ``rules/``, typed by ``registry.PropagateContext`` and
``registry.RewriteContext``); what passes and rules share besides, in ``common``.
"""

from .channels import channels_pass
from .erasable import ErasableStructure, erasable_pass
from .groups import ChannelSlice, PruningGroup, groups_pass
from .registry import RULES, Method, OpRule
from .shapes import shapes_pass
from .shrink import ShrinkStats, shrink_graph, shrink_pass
from .trace import trace_module

__all__ = ["RULES", "ChannelSlice", "ErasableStructure", "Method", "OpRule", "PruningGroup",
           "ShrinkStats", "channels_pass", "erasable_pass", "groups_pass", "shapes_pass", "shrink_graph", "shrink_pass",
           "trace_module"]
