"""Time to accuracy of gfsim against the baselines a user would otherwise pick, on W-A
(../shared/benchmarks.md), measured side by side in one process.

    python benchmarks/baselines.py [--seeds 64] [--t1 300] [--repeats 5] [--scipy-subset 8]
        [--torch-max-steps 60000] [--out benchmarks/results/baselines.json]

A script entry point to the suite's code in gfsim.bench (``gfsim bench --only W-A`` runs the same
methods at the suite's sizes): the reference (Dopri8, rtol 1e-12), gfsim.simulate at several
rtol, hand-written Diffrax, JAX GD (gfsim.gd) with the first-order extrapolation of its error,
PyTorch GD batched with bmm, and scipy's DOP853 in a Python loop. Writes the JSON, a Markdown
table (same name, .md) and the accuracy-vs-time plot (.png). scipy and torch are
benchmark-only (the ``bench`` extra); a missing one is skipped and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from gfsim.bench import measure, run_problem
from gfsim.bench.report import markdown, plot_workload
from gfsim.bench.workloads import problem_a


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--t1", type=float, default=300.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--scipy-subset", type=int, default=8)
    p.add_argument("--torch-max-steps", type=int, default=60_000,
                   help="longer torch runs are timed on this many steps and scaled")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "baselines.json"))
    args = p.parse_args(argv)
    t = time.perf_counter()
    prob = problem_a(args.seeds, args.t1, scipy_subset=args.scipy_subset,
                     torch_max_steps=args.torch_max_steps)
    w = dict(workload="W-A", problems=[run_problem(prob, args.repeats,
                                                   progress=lambda m: print(m, flush=True))])
    res = dict(command=" ".join(["python", "benchmarks/baselines.py", *sys.argv[1:]]),
               profile="custom", repeats=args.repeats, machine=measure.machine(),
               bench_extra=measure.bench_extra(), workloads={"W-A": w},
               total_wall_s=time.perf_counter() - t)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    stem = os.path.splitext(args.out)[0]
    plot_workload(w, stem + ".png")
    w["plot"] = os.path.basename(stem + ".png")
    with open(args.out, "w") as f:
        json.dump(measure.json_safe(res), f, indent=1, default=str)
    md = markdown(res)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
