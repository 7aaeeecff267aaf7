"""Reproducible speed and memory benchmarks of xai-toolbox (not part of the test run).

Run ``python -m benchmarks --framework torch|tf --device cpu|cuda [--quick] [--out DIR]``;
results and their reading are in ``docs/benchmarks.md``.
"""
