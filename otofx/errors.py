"""Errors otofx raises. Each says what was wrong, where, and what to do about it."""


class OtofxError(Exception):
    """Base class of every error otofx raises on purpose."""


class TraceError(OtofxError):
    """The model could not be turned into a graph (names the module and suggests a fix)."""


class ShapeError(OtofxError):
    """The example inputs do not fit the model (names the node)."""


class AnalysisError(OtofxError):
    """The analysis was asked something it cannot answer (wrong graph, missing inputs, a model
    with nothing to train)."""


class ShrinkError(OtofxError):
    """The rewrite could not produce a smaller graph that computes the same outputs."""


class ConfigError(OtofxError):
    """An optimizer or job configuration has a field out of range (names the field)."""


class ExportError(OtofxError):
    """An exporter (ONNX) could not take the model, or the exported file computes something else
    (names the node or the output)."""


class MissingDependencyError(OtofxError, ImportError):
    """An optional package an integration needs is not installed (names it and the pip command)."""
