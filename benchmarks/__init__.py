"""Side-by-side benchmarks (issue #9): this project, PyActiveStorage, plain readers, the machine's limits.

Run ``python -m benchmarks`` (full, ~400 MB datasets) or ``python -m benchmarks --quick`` (~20 MB,
under a minute). See ``docs/performance.md`` for the figures and :mod:`benchmarks.__main__` for
the options.
"""
