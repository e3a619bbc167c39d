"""Before/after check of the event-driven solver: first-call (compile) and steady-state times,
and every output, on fixed cases.

    GFSIM_CACHE_DIR=0 python benchmarks/events_refactor.py --save before.npz
    GFSIM_CACHE_DIR=0 python benchmarks/events_refactor.py --save after.npz --compare before.npz

Run it from two checkouts (PYTHONPATH=<checkout>) in the same session to compare a change. The
comparison reports, per case, whether statuses and step / event counts are identical and the
largest relative difference of the saved weights and losses (round-off expected).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import gfsim


def cases(only=None):
    k = jax.random.key
    out = {}
    # W-A (never slides): 288 seeds, the events solver's cheapest path
    out["W-A"] = lambda: gfsim.simulate(
        gfsim.MLP((2, 2, 2), key=k(0), init="disk", scale=1e-4, runs=288),
        gfsim.data.paper_pair(), 300.0, reduction="mean", rtol=1e-8)
    # W-B (16 seeds: most slide), as in the quick benchmark
    kd, kn = jax.random.split(k(0))
    wb_data = gfsim.data.sphere(kd, 2, 10, runs=16)
    wb_net = gfsim.MLP((10, 50, 1), key=kn, scale=0.1, runs=16)
    out["W-B"] = lambda: gfsim.simulate(wb_net, wb_data, 50.0, reduction="sum", rtol=1e-6,
                                        max_steps=4000)
    # the kinks benchmark's sliding case
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    X, Y = jax.random.normal(k1, (6, 5)), jax.random.normal(k2, (6, 2))
    out["sliding"] = lambda: gfsim.simulate(gfsim.MLP((5, 8, 2), init="gaussian", key=k3),
                                            gfsim.Dataset(X, Y), 10.0, reduction="sum",
                                            rtol=1e-8, num_saves=4)
    # depth 3, leaky ReLU, stop_loss, lanes with refill
    td = gfsim.data.teacher_student(k(4), 12, 3)
    out["depth3-stop"] = lambda: gfsim.simulate(
        gfsim.MLP((3, 6, 6, 1), key=k(5), init="gaussian", scale=0.5, runs=6), td, 30.0,
        loss="exponential", stop_loss=1e-3, rtol=1e-6, max_steps=3000)
    out["leaky-lanes"] = lambda: gfsim.simulate(
        gfsim.MLP((3, 6, 1), "leaky_relu", key=k(6), init="gaussian", scale=0.5, runs=8), td,
        20.0, rtol=1e-6, lanes=3, max_steps=3000)
    return {n: f for n, f in out.items() if not only or n in only}


def flatten(tr):
    d = {}
    for name in ("loss", "final_loss", "t_final", "status", "num_steps", "num_accepted",
                 "num_rejected", "num_crossings", "num_slides", "loop_steps"):
        v = getattr(tr, name)
        if v is not None:
            d[name] = np.asarray(v)
    for i, w in enumerate(tr.weights):
        d[f"w{i}"] = np.asarray(w)
    for i, w in enumerate(tr.final_weights):
        d[f"fw{i}"] = np.asarray(w)
    if tr.sliding is not None:
        for i, s in enumerate(tr.sliding):
            d[f"sliding{i}"] = np.asarray(s)
    return d


COUNTS = ("status", "num_steps", "num_accepted", "num_rejected", "num_crossings", "num_slides",
          "loop_steps")


def compare(a, b):
    same = all(np.array_equal(a[k], b[k]) for k in COUNTS if k in a)
    worst = 0.0
    for k in a:
        if k in COUNTS or k.startswith("sliding"):
            continue
        x, y = a[k], b[k]
        fin = np.isfinite(x) & np.isfinite(y)
        if not np.array_equal(np.isfinite(x), np.isfinite(y)):
            worst = np.inf
            continue
        scale = np.maximum(np.abs(x[fin]).max(initial=0.0), 1e-300)
        worst = max(worst, float(np.abs(x[fin] - y[fin]).max(initial=0.0) / scale))
    slide_same = all(np.array_equal(a[k], b[k]) for k in a if k.startswith("sliding"))
    return same, slide_same, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", required=True)
    ap.add_argument("--compare")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    res, times = {}, {}
    for name, fn in cases(a.only).items():
        t0 = time.perf_counter()
        tr = fn()
        jax.block_until_ready(tr.final_loss)
        first = time.perf_counter() - t0
        steady = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn().final_loss)
            steady.append(time.perf_counter() - t0)
        times[name] = dict(first=first, steady=float(np.median(steady)))
        res[name] = flatten(tr)
        print(f"{name}: first {first:.1f} s, steady {times[name]['steady']:.3f} s, "
              f"{tr.status_counts()}", flush=True)
    np.savez(a.save, **{f"{c}/{k}": v for c, d in res.items() for k, v in d.items()})
    with open(a.save + ".json", "w") as f:
        json.dump(times, f, indent=1)
    if a.compare:
        old = np.load(a.compare)
        for c, d in res.items():
            o = {k.split("/", 1)[1]: old[k] for k in old.files if k.startswith(c + "/")}
            same, slide_same, worst = compare(o, d)
            print(f"{c}: counts identical {same}, sliding flags identical {slide_same}, "
                  f"max rel diff {worst:.2e}")


if __name__ == "__main__":
    main()
