"""Helpers shared by the benchmark scripts (they live in gfsim.bench, so ``gfsim bench`` works
from an installed package)."""

from gfsim.bench.measure import median_time as median_time  # noqa: F401
