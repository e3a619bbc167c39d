"""Sweep overhead: the share of a sweep's wall time spent outside compiled compute (planning,
building the batch inputs, converting results, store writes, progress).

    python benchmarks/sweep.py [--seeds 84] [--batch-runs 64] [--backend local|ray]
        [--address ADDR] [--out benchmarks/results/sweep.json]

The workload is the paper's depth experiment in miniature: ReLU nets of depth 2, 3 and 4 (three
compiled shapes) on teacher-student data, two init scales, ``--seeds`` seeds each (504 runs by
default), in batches of at most ``--batch-runs`` runs. Compiled compute is the sum over batches of
the batched ``gfsim.simulate`` call (compile included: the store's ``batch_solve_time``);
everything else the sweep's wall time holds is overhead. The target is overhead < 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import gfsim
from gfsim.sweep import parse_spec, plan, sweep


def workload(seeds: int, batch_runs: int) -> dict:
    return {
        "name": "bench-depth",
        "dataset": "teacher_student", "n": 16, "dim": 4, "teacher_width": 4,
        "width": 8, "activation": "relu", "init": "gaussian",
        "t1": 100.0, "num_saves": 32, "rtol": 1e-6,
        "seeds": seeds,
        "grid": {"depth": [2, 3, 4], "init_scale": [0.1, 0.3]},
        "options": {"batch_runs": batch_runs},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=84)
    p.add_argument("--batch-runs", type=int, default=64)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--backend", default="local", choices=("local", "ray"))
    p.add_argument("--address", default=None, help="Ray cluster address (backend ray)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "sweep.json"))
    args = p.parse_args(argv)

    start = time.perf_counter()
    spec = parse_spec(workload(args.seeds, args.batch_runs))
    pl = plan(spec)
    plan_time = time.perf_counter() - start
    tmp = tempfile.mkdtemp(prefix="gfsim-bench-sweep-")
    try:
        store = os.path.join(tmp, "store")
        t0 = time.perf_counter()
        summary = sweep(spec, store, progress=not args.no_progress, backend=args.backend,
                        **({} if args.address is None else {"address": args.address}))
        sweep_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = gfsim.store.flat(gfsim.load(store))
        load_time = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _, first = np.unique(ds["batch"].values, return_index=True)
    solve = float(ds["batch_solve_time"].values[first].sum())
    batch_wall = float(ds["batch_wall_time"].values[first].sum())
    total = plan_time + sweep_time
    res = {
        "command": " ".join(["python", "benchmarks/sweep.py", *sys.argv[1:]]),
        "backend": args.backend,
        "runs": spec.num_runs,
        "shapes": len(pl.shapes),
        "batches": len(pl.batches),
        "statuses": {str(k): int(v) for k, v in zip(*np.unique(ds["status"].values,
                                                                return_counts=True))},
        "total_s": total,
        "compiled_compute_s": solve,
        "overhead_s": total - solve,
        "overhead_share": (total - solve) / total,
        "batch_inputs_and_conversion_s": batch_wall - solve,
        "plan_s": plan_time,
        "load_s": load_time,
        "failed_runs": summary["failed"],
        "devices": len(__import__("jax").devices()),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    print(f"overhead outside compiled compute: {100 * res['overhead_share']:.1f}% of "
          f"{total:.1f} s ({res['runs']} runs, {res['shapes']} shapes, {res['batches']} batches)")
    return 0 if res["overhead_share"] < 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
