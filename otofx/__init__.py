"""otofx: train once, get a physically smaller model that computes the same thing.

    gm = otofx.trace(model)
    analysis = otofx.analyze(gm, example_inputs)
    small = otofx.shrink(gm, analysis)        # removes the channels that are exactly zero

    job = otofx.compress(gm, otofx.DHSPGConfig(lr=0.1, target_group_sparsity=0.5), (x,))
    ... train job.module with job.optimizer ...
    small = job.subnet(); print(job.report())
"""

from otofx import passes
from otofx.analysis import Analysis
from otofx.api import analyze, shrink, trace
from otofx.backend import backend
from otofx.calibrate import recalibrate_batchnorm
from otofx.compress import CompressionJob, compress
from otofx.config import DHSPGConfig, H2SPGConfig, HESSOConfig
from otofx.dhspg import DHSPG
from otofx.errors import (
    AnalysisError,
    ConfigError,
    ExportError,
    MissingDependencyError,
    OtofxError,
    ShapeError,
    ShrinkError,
    TraceError,
)
from otofx.h2spg import H2SPG
from otofx.hesso import HESSO
from otofx.io import load, save
from otofx.optim_base import NonFiniteGradientError
from otofx.passes import ChannelSlice, PruningGroup
from otofx.passes.erasable import ErasableStructure

__version__ = "0.1.0"

__all__ = ["DHSPG", "H2SPG", "HESSO", "Analysis", "AnalysisError", "ChannelSlice", "CompressionJob",
           "ConfigError", "DHSPGConfig", "ErasableStructure", "ExportError", "H2SPGConfig", "HESSOConfig",
           "MissingDependencyError", "NonFiniteGradientError", "OtofxError",
           "PruningGroup", "ShapeError", "ShrinkError", "TraceError", "analyze", "backend", "compress",
           "load", "passes", "recalibrate_batchnorm", "save", "shrink", "trace"]
