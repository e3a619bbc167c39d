"""The depth experiment's teacher-student sweep on the event solver, one depth at a time: the
data, nets and settings of `gfsim.experiments.depth` (profile quick unless --profile), the first
call of each depth timed (compile included, as `gfsim reproduce` pays it), and per run the
steps, rejected steps, kink crossings and status. What sizes the quick profile's depth list.

    python benchmarks/depth_events.py OUT.json [--n N] [--depths 2,3,4,6] [--seeds S]
                                      [--profile quick|full] [--crossings auto|step|locate]
"""

import argparse
import json
import time

import jax
import numpy as np

import gfsim
from gfsim.experiments import depth as D


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--profile", default="quick", choices=("quick", "full"))
    ap.add_argument("--n", type=int)
    ap.add_argument("--depths")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--crossings", default="auto", choices=("auto", "step", "locate"))
    a = ap.parse_args(argv)
    cfg = dict(D.SETTINGS[a.profile])
    if a.n:
        cfg["n"] = a.n
    if a.seeds:
        cfg["seeds"] = a.seeds
    depths = [int(k) for k in a.depths.split(",")] if a.depths else list(cfg["depths"])
    kd, kn = jax.random.split(jax.random.key(1))  # the experiment's own key sequence
    data = gfsim.data.teacher_student(kd, cfg["n"], cfg["dim"], teacher_widths=D.TEACHER_WIDTHS,
                                      labels="sign")
    method = gfsim.methods.Events(max_steps=cfg["max_steps"], crossings=a.crossings)
    rows = []
    for k in depths:
        kn, sub = jax.random.split(kn)
        widths = (cfg["dim"],) + (cfg["width"],) * (k - 1) + (1,)
        net = gfsim.MLP(widths, "relu", key=sub, init="gaussian", scale=cfg["scale"],
                        runs=cfg["seeds"])
        t0 = time.perf_counter()
        tr = gfsim.simulate(net, data, cfg["t1"], loss=cfg["losses"][0], reduction="mean",
                            stop_loss=cfg["stop_loss"], rtol=cfg["rtol"], atol=cfg["atol"],
                            num_saves=D.NUM_SAVES, decades=D.DECADES, method=method)
        jax.block_until_ready(tr.final_loss)
        row = dict(depth=k, seconds=round(time.perf_counter() - t0, 2),
                   steps=np.asarray(tr.num_steps).tolist(),
                   rejected=np.asarray(tr.num_rejected).tolist(),
                   crossings=np.asarray(tr.num_crossings).tolist(),
                   status=[gfsim.Status(int(s)).name.lower() for s in np.asarray(tr.status)],
                   t_final=np.asarray(tr.t_final).tolist())
        print(f"depth {k}: {row['seconds']} s, steps {min(row['steps'])}-{max(row['steps'])}, "
              f"crossings {min(row['crossings'])}-{max(row['crossings'])}, "
              f"{sorted(set(row['status']))}", flush=True)
        rows.append(row)
        # written after each depth (a long one may be stopped)
        with open(a.out, "w") as f:
            json.dump(dict(settings={**cfg, "depths": depths, "crossings": a.crossings,
                                     "profile": a.profile, "loss": cfg["losses"][0]},
                           rows=rows), f, indent=1, default=str)


if __name__ == "__main__":
    main()
