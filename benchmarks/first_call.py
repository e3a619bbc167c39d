"""First call (compile) and steady-state time of simulate on W-A or W-B, in a fresh process.

    GFSIM_CACHE_DIR=0 python benchmarks/first_call.py W-A|W-B

Prints the first call's wall and CPU time and the median of 5 steady calls. Run it from two
checkouts (PYTHONPATH=<checkout>) alternately to compare a change.
"""

import sys
import time

import jax
import numpy as np

import gfsim


def problem(which):
    if which == "W-A":
        net = gfsim.MLP((2, 2, 2), key=jax.random.key(0), init="disk", scale=1e-4, runs=288)
        return lambda: gfsim.simulate(net, gfsim.data.paper_pair(), 300.0, reduction="mean",
                                      rtol=1e-8)
    kd, kn = jax.random.split(jax.random.key(0))
    data = gfsim.data.sphere(kd, 2, 10, runs=16)
    net = gfsim.MLP((10, 50, 1), key=kn, scale=0.1, runs=16)
    return lambda: gfsim.simulate(net, data, 50.0, reduction="sum", rtol=1e-6, max_steps=4000)


def main():
    which = sys.argv[1] if len(sys.argv) > 1 else "W-A"
    f = problem(which)
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(f().final_loss)
    t1, c1 = time.perf_counter(), time.process_time()
    steady = []
    for _ in range(5):
        a = time.perf_counter()
        jax.block_until_ready(f().final_loss)
        steady.append(time.perf_counter() - a)
    print(f"{which} first {t1 - t0:.2f} (cpu {c1 - c0:.2f}) steady {np.median(steady):.4f}")


if __name__ == "__main__":
    main()
