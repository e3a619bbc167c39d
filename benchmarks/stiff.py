"""Stiff endpoints and long horizons: explicit against implicit steps (issue 16).

    python benchmarks/stiff.py [--profile quick|full] [--cases lsq relu slide slide1 exp wd]
        [--out benchmarks/results/stiff_quick.json]

Cases (every one run to where the flow has done its work: a stiff endpoint or t1 = 1e20):

- S-LSQ: depth-2 linear nets on targets they cannot fit (n = 50 points in 10-D, 5 outputs,
  width 16, Gaussian init, mean loss; the end is the least-squares map), t1 = 1e4, rtol 1e-8.
- W-D to its stiff endpoint: the W-D workload of gfsim.bench (deep linear
  30x30 matrix completion, depth 3, N(0, 1e-3^2) init, sum loss on the observed entries), t1 =
  3e4 instead of W-D's 3000; 2700 parameters, the Newton systems solved matrix-free (CG).
- S-RELU: the event solver on a stiff tail: depth-2 ReLU nets 10 -> 16 -> 5 on 50 points in
  the positive orthant with targets they cannot fit, first-layer weights positive, so every
  unit stays active (no event; the flow is the linear net's and ends at the least-squares
  map), t1 = 1e4, rtol 1e-8, method "events".
- S-RELU-SLIDE (``--cases slide``, not in the default run): tests/test_stiff.py's plateau case
  (a depth-3 ReLU net on 20 points no net can fit), t1 = 1e4: a tail that slides (pairs held
  on their kinks below the first hidden layer, where "auto" stays explicit).
- S-RELU-SLIDE-1 (``--cases slide1``): the same 20 points, depth-2 ReLU nets 3 -> 16 -> 1 (init
  scale 0.5, a batch of seeds), t1 = 1e4, default rtol: tails that slide on first-layer kinks,
  which "auto" steps implicitly on the sliding field; the error is the final weights' against
  Tsit5 at rtol 1e-10, and the held sets at the end are compared with its.
- S-EXP: the exponential loss on separable data (12 points in 3-D, a linear classifier of
  width 4), t1 = 1e20: steps per decade, clock "linear" against "log".

For each: ``solver="tsit5"`` against the default ``solver="auto"`` (``gfsim.stiff.Auto()``, under
both methods) (Tsit5, switching to
Kvaerno5 with Newton iterations where stability-limited), the same batch, steady-state time
(median of repeated calls after the first, compiling, one) and the first call, steps (median and
max over runs), when the switch happened, and the error at the end against an independent
truth (S-LSQ: numpy's least squares; W-D: Tsit5 at rtol 1e-11; S-EXP: the direction at rtol
1e-10).
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
import numpy as np

import gfsim
from gfsim.bench import workloads

PROFILES = {"quick": dict(seeds=4, repeats=3), "full": dict(seeds=16, repeats=5)}


def timed(fn, repeats):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out.final_loss)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn().final_loss)
        times.append(time.perf_counter() - t0)
    return out, first, float(np.median(times))


def steps(tr):
    s = np.atleast_1d(np.asarray(tr.num_steps))
    return {"median": float(np.median(s)), "max": int(s.max())}


def e2e(weights):
    m = weights[0]
    for w in weights[1:]:
        m = w @ m
    return np.asarray(m)


def rel(a, b):
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    d = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    return {"median": float(np.median(d)), "max": float(np.max(d))}


def row(name, solver, tr, first, steady, err):
    t_stiff = None if tr.t_stiff is None else np.atleast_1d(np.asarray(tr.t_stiff))
    return {
        "case": name, "solver": solver, "method": tr.method, "status": tr.status_counts(),
        "first_s": round(first, 3), "steady_s": round(steady, 4), "steps": steps(tr),
        "rejected_median": float(np.median(np.asarray(tr.num_rejected))),
        "t_stiff_median": None if t_stiff is None else float(np.nanmedian(t_stiff))
        if np.isfinite(t_stiff).any() else float("nan"),
        "switched": None if t_stiff is None else int(np.isfinite(t_stiff).sum()),
        "error": err,
    }


def case_lsq(seeds, repeats):
    kx, ky, kn = jax.random.split(jax.random.key(16), 3)
    X = jax.random.normal(kx, (50, 10))
    Y = jax.random.normal(ky, (50, 5))
    data = gfsim.Dataset(X, Y)
    nets = gfsim.MLP((10, 16, 5), "linear", key=kn, runs=seeds)
    W = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0].T
    out = []
    for solver in ("tsit5", "auto"):
        tr, first, steady = timed(lambda s=solver: gfsim.simulate(
            nets, data, 1e4, rtol=1e-8, solver=s, num_saves=8, max_steps=200_000), repeats)
        err = rel(e2e(tr.final_weights), np.broadcast_to(W, (seeds,) + W.shape))
        out.append(row("S-LSQ", solver, tr, first, steady, err))
    return out


def case_relu(seeds, repeats):
    kx, ky, k1, k2 = jax.random.split(jax.random.key(17), 4)
    X = jnp.abs(jax.random.normal(kx, (50, 10))) + 0.5
    Y = jax.random.normal(ky, (50, 5))
    data = gfsim.Dataset(X, Y)
    ws = [jnp.abs(jax.random.normal(k1, (seeds, 16, 10))) * 0.3 + 0.1,
          0.3 * jax.random.normal(k2, (seeds, 5, 16))]
    nets = gfsim.MLP.from_weights(ws, "relu")
    W = np.linalg.lstsq(np.asarray(X), np.asarray(Y), rcond=None)[0].T
    out = []
    for name, solver in (("tsit5", "tsit5"), ("auto", "auto")):
        tr, first, steady = timed(lambda s=solver: gfsim.simulate(
            nets, data, 1e4, rtol=1e-8, solver=s, num_saves=8, max_steps=400_000), repeats)
        err = rel(e2e(tr.final_weights), np.broadcast_to(W, (seeds,) + W.shape))
        r = row("S-RELU", name, tr, first, steady, err)
        r["crossings_max"] = int(np.asarray(tr.num_crossings).max())
        out.append(r)
    return out


def case_slide(repeats):
    base = gfsim.data.teacher_student(jax.random.key(7), n=16, dim=3)
    net = gfsim.MLP((3, 8, 8, 1), key=jax.random.key(8), scale=0.5)
    data = gfsim.Dataset(jnp.concatenate([base.X, base.X[:4]]),
                         jnp.concatenate([base.Y, -base.Y[:4]]))
    out = []
    for name, solver in (("tsit5", "tsit5"), ("auto", "auto")):
        tr, first, steady = timed(lambda s=solver: gfsim.simulate(
            net, data, 1e4, solver=s, num_saves=8, max_steps=400_000), repeats)
        r = row("S-RELU-SLIDE", name, tr, first, steady,
                {"final_loss": float(tr.final_loss)})
        r["crossings_max"] = int(np.asarray(tr.num_crossings).max())
        r["held_at_end"] = int(sum(np.asarray(s)[-1].sum() for s in tr.sliding))
        out.append(r)
    return out


def case_slide_first(seeds, repeats):
    base = gfsim.data.teacher_student(jax.random.key(7), n=16, dim=3)
    data = gfsim.Dataset(jnp.concatenate([base.X, base.X[:4]]),
                         jnp.concatenate([base.Y, -base.Y[:4]]))
    nets = gfsim.MLP((3, 16, 1), key=jax.random.key(9), scale=0.5, runs=seeds)
    kw = dict(num_saves=8, max_steps=1_000_000)
    ref = gfsim.simulate(nets, data, 1e4, rtol=1e-10, solver="tsit5", **kw)

    def flat(tr):
        return np.concatenate([np.asarray(w).reshape(seeds, -1) for w in tr.final_weights],
                              axis=1)

    ref_held = np.asarray(ref.sliding[0])[:, -1]
    out = []
    for solver in ("tsit5", "auto"):
        tr, first, steady = timed(lambda s=solver: gfsim.simulate(
            nets, data, 1e4, solver=s, **kw), repeats)
        r = row("S-RELU-SLIDE-1", solver, tr, first, steady, rel(flat(tr), flat(ref)))
        held = np.asarray(tr.sliding[0])[:, -1]
        r["held_at_end"] = [int(h.sum()) for h in held]
        r["held_sets_as_reference"] = int(sum((h == g).all() for h, g in zip(held, ref_held)))
        r["crossings"] = [int(c) for c in np.asarray(tr.num_crossings)]
        r["reference_crossings"] = [int(c) for c in np.asarray(ref.num_crossings)]
        r["reference_steps"] = steps(ref)
        r["final_loss_median"] = float(np.median(np.asarray(tr.final_loss)))
        out.append(r)
    return out


def case_wd(seeds, repeats):
    prob = workloads.workload_d("quick")[0]
    nets = jax.tree_util.tree_map(lambda a: a[:seeds], prob.net)
    data = jax.tree_util.tree_map(lambda a: a[:seeds], prob.data)
    t1 = 3e4
    kw = dict(reduction="sum", num_saves=8, max_steps=400_000)
    ref = gfsim.simulate(nets, data, t1, rtol=1e-11, solver="tsit5", **kw)
    out = []
    for solver in ("tsit5", "auto"):
        tr, first, steady = timed(lambda s=solver: gfsim.simulate(
            nets, data, t1, rtol=1e-8, solver=s, **kw), repeats)
        err = rel(e2e(tr.final_weights), e2e(ref.final_weights))
        r = row("W-D t1=3e4", solver, tr, first, steady, err)
        r["final_loss_median"] = float(np.median(np.asarray(tr.final_loss)))
        out.append(r)
    return out


def case_exp(repeats):
    Xs = jax.random.normal(jax.random.key(3), (12, 3))
    data = gfsim.Dataset(Xs, jnp.sign(Xs @ jnp.array([1.0, -0.5, 0.3]))[:, None])
    net = gfsim.MLP((3, 4, 1), "linear", key=jax.random.key(4), scale=0.5)

    def direction(tr):
        w = e2e(tr.final_weights).ravel()
        return w / np.linalg.norm(w)

    ref = direction(gfsim.simulate(net, data, 1e20, num_saves=2, rtol=1e-10,
                                   loss="exponential", clock="log", max_steps=200_000))
    out = []
    for clock in ("linear", "log"):
        for solver in ("tsit5", "auto"):
            for rtol in (1e-6, 1e-8):
                per = {}
                for k in (12, 20):
                    tr = gfsim.simulate(net, data, 10.0 ** k, num_saves=2, rtol=rtol,
                                        loss="exponential", clock=clock, solver=solver,
                                        max_steps=200_000)
                    per[k] = int(tr.num_steps)
                tr, first, steady = timed(lambda c=clock, s=solver, r=rtol: gfsim.simulate(
                    net, data, 1e20, num_saves=2, rtol=r, loss="exponential", clock=c,
                    solver=s, max_steps=200_000), repeats)
                r = row(f"S-EXP clock={clock} rtol={rtol:g}", solver, tr, first, steady,
                        {"direction": float(np.abs(direction(tr) - ref).max())})
                r["steps_per_decade_1e12_1e20"] = (per[20] - per[12]) / 8
                out.append(r)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--cases", nargs="+", default=["lsq", "relu", "exp", "wd"],
                    choices=["lsq", "relu", "slide", "slide1", "exp", "wd"])
    args = ap.parse_args(argv)
    p = PROFILES[args.profile]
    cases = {"lsq": lambda: case_lsq(p["seeds"], p["repeats"]),
             "relu": lambda: case_relu(p["seeds"], p["repeats"]),
             "slide": lambda: case_slide(1),
             "slide1": lambda: case_slide_first(p["seeds"], p["repeats"]),
             "exp": lambda: case_exp(p["repeats"]),
             "wd": lambda: case_wd(p["seeds"], p["repeats"])}
    rows = []
    for name in args.cases:
        for r in cases[name]():
            print(json.dumps(r), flush=True)
            rows.append(r)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"stiff_{args.profile}.json")
    meta = {"profile": args.profile, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "device": str(jax.devices()[0]),
            "python": sys.version.split()[0], "command": "python benchmarks/stiff.py --profile "
            + args.profile + " --cases " + " ".join(args.cases)}
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
