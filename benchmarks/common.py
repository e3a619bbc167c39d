"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import jax


def median_time(fn, repeats):
    """Median wall time of ``repeats`` calls (each blocked until ready), and all of them."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return statistics.median(out), out
