"""Scaling series: experiment A's workload (paper pair, disk init, width 2, t1 = 300, rtol 1e-8)
and a width-50 variant, for growing numbers of seeds, with both ReLU methods.

    python benchmarks/scaling.py [--runs 288 2304 18432] [--out benchmarks/results/scaling.json]

Reports steady-state seconds (median of repeats after a compile call) and runs per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time  # noqa: E402

import gfsim  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[288, 2304])
    p.add_argument("--widths", type=int, nargs="+", default=[2, 50])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "scaling.json"))
    a = p.parse_args(argv)
    data = gfsim.data.paper_pair()
    rows = []
    for width in a.widths:
        for runs in a.runs:
            net = gfsim.MLP((2, width, 2), init="disk", key=jax.random.key(0), runs=runs)
            for method in ("plain", "events"):
                run = lambda net=net, method=method: gfsim.simulate(  # noqa: E731
                    net, data, 300.0, rtol=1e-8, method=method, max_steps=20_000
                )
                tr = run()
                t, _ = median_time(run, a.repeats)
                rows.append(dict(width=width, runs=runs, method=method, seconds=t,
                                 runs_per_s=runs / t, status=tr.status_counts(),
                                 lockstep_waste=tr.lockstep_waste()))
                print(rows[-1], flush=True)
    res = dict(device=str(jax.devices()[0]), jax=jax.__version__, rows=rows)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    main()
