"""Cost and memory of a derivative through the flow, per adjoint, against the forward solve.

    python benchmarks/adjoints.py [--repeats 3] [--out benchmarks/results/adjoints.json]

Functional: the sum over runs of the final stable rank of W_1; input: the init scale (one
scalar, so one forward-mode pass gives the derivative) on W-A (288 runs, events, never slides)
and W-B (16 seeds, events, most slide). Reported per adjoint: the first call (compile), the
steady-state time relative to the forward solve's, and the compiled program's memory
(XLA's memory analysis: arguments + outputs + temporaries) relative to the forward solve's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time  # noqa: E402

import gfsim  # noqa: E402
from gfsim import analysis as A  # noqa: E402


def workloads():
    base_a = gfsim.MLP((2, 2, 2), key=jax.random.key(0), init="disk", scale=1.0, runs=288)
    yield ("W-A", base_a, gfsim.data.paper_pair(), 300.0, 1e-4,
           dict(reduction="mean", rtol=1e-8, num_saves=2))
    kd, kn = jax.random.split(jax.random.key(0))
    base_b = gfsim.MLP((10, 50, 1), key=kn, scale=1.0, runs=16)
    yield ("W-B", base_b, gfsim.data.sphere(kd, 2, 10, runs=16), 50.0, 0.1,
           dict(reduction="sum", rtol=1e-6, max_steps=4000, num_saves=2))


def memory(fn, x):
    m = jax.jit(fn).lower(x).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "adjoints.json"))
    a = ap.parse_args()
    rows = []
    for name, base, data, t1, scale, kw in workloads():
        def value(s, adjoint="reverse", base=base, data=data, t1=t1, kw=kw):
            tr = gfsim.simulate(gfsim.scaled(base, s), data, t1, adjoint=adjoint, **kw)
            return jnp.sum(A.stable_rank(tr.final_weights[0]))

        calls = {
            "forward solve": jax.jit(value),
            "reverse (jax.grad, checkpointed)": jax.jit(jax.grad(value)),
            "forward mode (jax.jvp)": jax.jit(
                lambda s: jax.jvp(lambda u: value(u, "forward"), (s,), (jnp.ones_like(s),))[1]),
        }
        x = jnp.asarray(scale)
        base_time = base_mem = None
        for label, fn in calls.items():
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(x))
            first = time.perf_counter() - t0
            steady, _ = median_time(lambda fn=fn, x=x: jax.block_until_ready(fn(x)), a.repeats)
            mem = memory(fn, x)
            if base_time is None:
                base_time, base_mem = steady, mem
            rows.append(dict(workload=name, call=label, value=float(out), first_call_s=first,
                             steady_s=steady, time_ratio=steady / base_time,
                             memory_bytes=mem, memory_ratio=mem / base_mem))
            print(f"{name} {label}: first {first:.1f} s, steady {steady:.3f} s "
                  f"({steady / base_time:.2f}x), memory {mem / 2**20:.1f} MiB "
                  f"({mem / base_mem:.2f}x), value {float(out):.6g}", flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(device=f"CPU ({platform.processor() or platform.machine()}, "
                              f"{os.cpu_count()} cores)", rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
