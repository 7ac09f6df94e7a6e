"""otofx: train once, get a physically smaller model that computes the same thing.

    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, example_inputs)
    small = otofx.shrink(gm, analysis)        # removes the channels that are exactly zero
"""

from otofx import passes
from otofx.analysis import Analysis
from otofx.api import analyze, shrink, trace
from otofx.errors import (AnalysisError, ConfigError, OtofxError, ShapeError, ShrinkError,
                          TraceError)
from otofx.passes import ChannelSlice, PruningGroup

__version__ = "0.1.0"

__all__ = ["Analysis", "AnalysisError", "ChannelSlice", "ConfigError", "OtofxError",
           "PruningGroup", "ShapeError", "ShrinkError", "TraceError", "analyze", "passes",
           "shrink", "trace"]
