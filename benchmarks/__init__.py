"""otofx benchmarks, each side by side with the peer packages where installed.

Run one as a module from the repository root, e.g. ``python -m benchmarks.analysis_speed``.
"""
