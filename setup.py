"""Build the optional C fast path (activestorage/_fused.c); everything else is in pyproject.toml.

The extension is optional: where no C compiler is available the install still succeeds and the
kernel uses its NumPy path (same results, more passes over memory).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("activestorage._fused", ["activestorage/_fused.c"], optional=True)])
