"""Core-solver figures: experiment A's compile and steady-state time, and the solver overhead on
W-B (../shared/benchmarks.md). Ratios are measured in one process, side by side.

    python benchmarks/core.py [--repeats 5] [--out benchmarks/results/core.json]

Solver overhead = run time / (vector-field evaluations x time of one bare batched gradient),
where the bare gradient is timed inside one compiled loop (no dispatch), and the evaluations of
a vmapped solve are the lockstep ones: stages per step x the largest step count in the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import numpy as np

import gfsim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time  # noqa: E402

from gfsim.bench.methods import batched_gradient_time  # noqa: E402
from gfsim.bench.suite import persistent_cache  # noqa: E402

TSIT5_EVALS_PER_STEP = 6  # 7 stages, first same as last


def experiment_a(repeats):
    data = gfsim.data.paper_pair()
    net = gfsim.MLP((2, 2, 2), key=jax.random.key(0), init="disk", scale=1e-4, runs=288)
    t = time.perf_counter()
    tr = gfsim.simulate(net, data, 300.0, reduction="mean", rtol=1e-8)
    jax.block_until_ready(tr.loss)
    first = time.perf_counter() - t
    net2 = gfsim.MLP((2, 2, 2), key=jax.random.key(1), init="disk", scale=1e-4, runs=288)
    steady, all_ = median_time(lambda: gfsim.simulate(net2, data, 300.0, reduction="mean",
                                                rtol=1e-8).loss, repeats)
    return dict(
        workload="W-A: size-2 dataset, width 2, disk r=1e-4, 288 seeds, t1=300, mean, rtol 1e-8",
        first_call_s=first,
        steady_s=steady,
        steady_all_s=all_,
        status=tr.status_counts(),
        max_steps=int(tr.num_steps.max()),
        median_steps=float(np.median(tr.num_steps)),
        lockstep_waste=tr.lockstep_waste(),
        converged=int(np.sum(np.asarray(tr.final_loss) < 1e-4)),
    )


def w_b(repeats, max_steps=20_000):
    kd, kn = jax.random.split(jax.random.key(0))
    data = gfsim.data.sphere(kd, 2, 10, runs=64)
    net = gfsim.MLP((10, 50, 1), key=kn, scale=0.1, runs=64)
    kw = dict(reduction="sum", rtol=1e-8, max_steps=max_steps, num_saves=16)
    t = time.perf_counter()
    tr = gfsim.simulate(net, data, 50.0, **kw)
    jax.block_until_ready(tr.loss)
    first = time.perf_counter() - t
    steady, all_ = median_time(lambda: gfsim.simulate(net, data, 50.0, **kw).loss, repeats)
    g = batched_gradient_time(net, data, "square", "sum", 2000)
    lock_steps = int(tr.num_steps.max())
    evals = TSIT5_EVALS_PER_STEP * lock_steps
    stalled = np.asarray(tr.status) == gfsim.Status.MAX_STEPS
    out = dict(
        workload=f"W-B: depth 2, d=10, width 50, 2 unit inputs, target 1, scale 0.1, 64 seeds, "
        f"t1=50, sum, rtol 1e-8, max_steps {max_steps}",
        first_call_s=first,
        steady_s=steady,
        steady_all_s=all_,
        bare_batched_gradient_s=g,
        lockstep_vector_field_evals=evals,
        solver_overhead=steady / (evals * g),
        status=tr.status_counts(),
        stalled_runs=int(stalled.sum()),
        lockstep_waste=tr.lockstep_waste(),
        median_steps_smooth_runs=float(np.median(np.asarray(tr.num_steps)[~stalled]))
        if (~stalled).any() else None,
    )
    # The same figures on the runs that never stall (no sliding): what the solver costs where
    # the flow is piecewise smooth.
    if (~stalled).any():
        idx = np.where(~stalled)[0]
        sub_net, sub_data = net[idx], data[idx]
        tr2 = gfsim.simulate(sub_net, sub_data, 50.0, **kw)
        steady2, _ = median_time(
            lambda: gfsim.simulate(sub_net, sub_data, 50.0, **kw).loss, repeats
        )
        g2 = batched_gradient_time(sub_net, sub_data, "square", "sum", 2000)
        evals2 = TSIT5_EVALS_PER_STEP * int(tr2.num_steps.max())
        out["smooth_subset"] = dict(runs=int(len(idx)), steady_s=steady2,
                                    solver_overhead=steady2 / (evals2 * g2),
                                    lockstep_waste=tr2.lockstep_waste())
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "core.json"))
    args = p.parse_args(argv)
    res = dict(
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), device=jax.devices()[0].device_kind,
                     backend=jax.default_backend(), jax=jax.__version__),
        experiment_a=experiment_a(args.repeats),
        persistent_cache=persistent_cache(),
        w_b=w_b(args.repeats),
    )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2, default=str)
    print(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
