"""Op rules, one file per op family. Importing this package registers them in ``RULES``."""

from . import attention, conv, elementwise, layer_norm, layout, linear, norm, reduce, sizes, spatial  # noqa: F401
