"""Shared pytest setup: hypothesis profiles.

``HYPOTHESIS_PROFILE=ci`` (the default) is small and deterministic (derandomized, no example
database), so CI runs the same examples every time; ``HYPOTHESIS_PROFILE=fuzz`` explores 2000
examples per property with a random seed and keeps failures in the local database;
``HYPOTHESIS_PROFILE=dev`` is a quick random run. ``HYPOTHESIS_MAX_EXAMPLES=N`` overrides the
example count of whichever profile is loaded.
"""

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))   # `import strategies` from the tests

_slow_ok = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=_slow_ok)
settings.register_profile("dev", max_examples=15, deadline=None, print_blob=True,
                          suppress_health_check=_slow_ok)
settings.register_profile("fuzz", max_examples=2000, deadline=None, print_blob=True,
                          suppress_health_check=_slow_ok)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
if os.environ.get("HYPOTHESIS_MAX_EXAMPLES"):    # e.g. a longer random run: profile dev, 300
    settings.register_profile("override", settings(
        max_examples=int(os.environ["HYPOTHESIS_MAX_EXAMPLES"])))
    settings.load_profile("override")
