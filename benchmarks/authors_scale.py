"""W-E, the authors' scale: the exact ReLU flow on teacher-student data with n points, against
the GD loop it replaces.

    python benchmarks/authors_scale.py [--profile quick|full] [--depths 2 4] [--losses square]
        [--out benchmarks/results/authors_scale.json]

Workload (../shared/benchmarks.md, W-E): teacher-student sign labels (gfsim.data.teacher_student,
the paper's experiment B data), d = 10, student width 64, Gaussian init of scale 0.1, mean loss,
``gfsim.simulate`` with DEFAULT arguments (method "auto" = events, max_sliding None) but rtol;
integrated to t1 (past the escape from the init: the loss has fallen from about 1 and most
kinks have been crossed; see the loss at t1 in the output) or to stop_loss.

full: n = 1000, depths 2, 4, 8, 32 seeds; quick: n = 256, depths 2, 4, 4 seeds (seeds and
depths cut, never n below 256 nor t1 below the escape).

Reported per (depth, loss): the first call and the steady call; every run's status; steps,
crossings and slides per run and per unit time; time per loop iteration and per crossing;
lockstep waste; the room the runs needed (Trajectory.max_sliding); and against JAX GD
(gfsim.gd, the same batch, vmapped, jitted) at two learning rates: GD's time, GD's distance
from the flow at t1, and the Richardson extrapolation 2 GD(lr/2) - GD(lr) against the flow
(relative Frobenius distance over all weights, median and max over runs).
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
from gfsim.bench.workloads import E_DIM, E_SCALE, E_T1, E_WIDTH

PROFILES = {
    "quick": dict(n=256, depths=(2, 4), seeds=4, t1=E_T1, lrs=(2e-2, 1e-2)),
    "full": dict(n=1000, depths=(2, 4, 8), seeds=32, t1=E_T1, lrs=(2e-2, 1e-2)),
}
# the problem's constants are gfsim bench's W-E's
DIM, WIDTH, SCALE = E_DIM, E_WIDTH, E_SCALE


def problem(n, depth, seeds):
    kd, kn = jax.random.split(jax.random.key(2026))
    data = gfsim.data.teacher_student(kd, n=n, dim=DIM, runs=seeds)
    nets = gfsim.MLP((DIM,) + (WIDTH,) * (depth - 1) + (1,), key=kn, init="gaussian",
                     scale=SCALE, runs=seeds)
    return nets, data


def flat(weights):
    return np.concatenate([np.asarray(w).reshape(w.shape[0], -1) for w in weights], axis=1)


def rel(a, b):
    d = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    return {"median": float(np.median(d)), "max": float(np.max(d))}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out.final_loss)
    return out, time.perf_counter() - t0


def one(n, depth, loss, seeds, t1, lrs, rtol, extra_lrs=()):
    nets, data = problem(n, depth, seeds)
    kw = dict(loss=loss, rtol=rtol, num_saves=16)
    run = lambda: gfsim.simulate(nets, data, t1, **kw)  # noqa: E731
    tr, first = timed(run)
    tr, steady = timed(run)
    steps = np.asarray(tr.num_steps)
    cross = np.asarray(tr.num_crossings)
    slides = np.asarray(tr.num_slides)
    loops = int(np.asarray(tr.loop_steps))
    out = {
        "n": n, "depth": depth, "loss": loss, "seeds": seeds, "t1": t1, "rtol": rtol,
        "first_call_s": first, "steady_s": steady,
        "status_counts": tr.status_counts(),
        "loss_t0_median": float(np.median(np.asarray(tr.loss)[:, 0])),
        "final_loss_median": float(np.median(np.asarray(tr.final_loss))),
        "steps_per_run": {"median": float(np.median(steps)), "max": int(steps.max())},
        "crossings_per_run": {"median": float(np.median(cross)), "max": int(cross.max())},
        "slides_per_run": {"median": float(np.median(slides)), "max": int(slides.max())},
        "crossings_per_unit_time": float(np.median(cross) / t1),
        "crossings_per_step": float(cross.sum() / max(steps.sum(), 1)),
        "loop_iterations": loops,
        "ms_per_loop_iteration": 1e3 * steady / max(loops, 1),
        "ms_per_crossing": 1e3 * steady / max(int(cross.sum()), 1),
        "lockstep_waste": tr.lockstep_waste(),
        "max_sliding": sorted(set(np.asarray(tr.max_sliding).tolist())),
    }
    flow = flat(tr.final_weights)

    def run_gd(lr):
        """JAX GD over the same time at ``lr``: its end, steady and first-call times, steps."""
        steps_gd = int(round(t1 / lr))
        g = lambda: gfsim.gd(nets, data, lr, steps_gd, loss=loss, num_saves=2)  # noqa: E731
        gt, gfirst = timed(g)
        gt, gsteady = timed(g)
        return flat(gt.final_weights), gsteady, gfirst, steps_gd

    gd = {lr: run_gd(lr) for lr in lrs}
    (lr1, lr2) = lrs
    rich = 2 * gd[lr2][0] - gd[lr1][0]
    out["gd"] = {
        str(lr): {"steps": s, "steady_s": t, "first_call_s": f, "vs_flow": rel(w, flow)}
        for lr, (w, t, f, s) in gd.items()}
    out["richardson_vs_flow"] = rel(rich, flow)
    # GD at smaller learning rates: how small a rate matches the flow's cost, and how close
    # that GD comes (its error falls linearly with lr)
    out["gd_smaller_lr"] = {
        str(lr): {"steps": s, "steady_s": t, "vs_flow": rel(w, flow)}
        for lr, (w, t, _, s) in ((lr, run_gd(lr)) for lr in extra_lrs)}
    out["gd_over_gfsim_time"] = {str(lr): gd[lr][1] / steady for lr in lrs}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=tuple(PROFILES), default="quick")
    ap.add_argument("--depths", type=int, nargs="*")
    ap.add_argument("--losses", nargs="*", default=["square"])
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--extra-lrs", type=float, nargs="*", default=[],
                    help="JAX GD also at these learning rates (steady time, distance)")
    ap.add_argument("--out", default="benchmarks/results/authors_scale.json")
    a = ap.parse_args(argv)
    prof = dict(PROFILES[a.profile])
    depths = a.depths or prof["depths"]
    seeds = a.seeds or prof["seeds"]
    rows = []
    for loss in a.losses:
        for depth in depths:
            r = one(prof["n"], depth, loss, seeds, prof["t1"], prof["lrs"], a.rtol,
                    a.extra_lrs)
            print(json.dumps(r), flush=True)
            rows.append(r)
    result = {"workload": "W-E", "profile": a.profile, "machine": {
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__}, "rows": rows}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
