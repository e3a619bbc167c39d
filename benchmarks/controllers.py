"""The event solver's step-size rules side by side: the default EventController (the I rule, and
Diffrax's PI rule, pcoeff 0.4 / icoeff 0.3, on the steps of runs at kinks: holding pairs, or
stepping through kinks under crossings="step"), the I rule throughout (its default once), the PI rule throughout and Diffrax's own PIDController,
on W-A (288 runs) and W-B quick (16 runs) at rtol 1e-4, 1e-6 and 1e-8, each
against the workload's Dopri8 reference; with --we also W-E quick at depth 2, one lane, rtol 1e-4
and 1e-5. Prints total steps, rejected steps, steady-state time and median / worst relative error,
then the total steps at matched median accuracy (log-log interpolation between the rtols), and
writes all of it to OUT.json.

    python benchmarks/controllers.py OUT.json [--we] [--gd] [--extras] [--only NAME ...]

(--only: the problems named, added to an existing OUT.json; --gd: JAX GD's first-order fit on
W-E in the same run, and gfsim's speed-up at matched accuracy 1e-4 against it; a W-E problem
already in OUT.json keeps its rules' rows; --extras: the sliding seed of W-E quick and the
stiff ReLU tail of tests/test_stiff.py, see extras; `--extras --only none` runs only those.)
"""

import json
import os
import sys
import time

import diffrax
import numpy as np

from gfsim.bench import methods as M
from gfsim.bench import workloads
from gfsim.bench.measure import accuracy, fit_first_order, flat_theta
from gfsim.events._control import EventController
from gfsim.flow import simulate
from gfsim.methods import Events


def rules(rtol):
    atol = rtol * 1e-3  # simulate's default atol
    return {"default (PI at kinks)": EventController(rtol=rtol, atol=atol),
            "I rule throughout": EventController(rtol=rtol, atol=atol, sliding_pcoeff=0,
                                                 sliding_icoeff=1),
            "PI throughout": EventController(rtol=rtol, atol=atol, pcoeff=0.4, icoeff=0.3),
            "Diffrax PIDController": diffrax.PIDController(rtol=rtol, atol=atol)}


def measure(p, ref, rtols, lanes=None):
    rows = []
    for rtol in rtols:
        for name, ctrl in rules(rtol).items():
            extra = {} if lanes is None else dict(lanes=lanes)
            kw = M._sim_kwargs(p, method=Events(controller=ctrl, max_steps=p.max_steps, **extra))

            def call(kw=kw):
                tr = simulate(p.net, p.data, p.t1, **kw)
                tr.weights[0].block_until_ready()
                return tr

            call()  # compile
            t0 = time.perf_counter()
            tr = call()
            dt = time.perf_counter() - t0
            row = dict(rule=name, rtol=rtol, steady_s=dt, steps=int(np.sum(tr.num_steps)),
                       rejected=int(np.sum(tr.num_rejected)),
                       most_steps=int(np.max(tr.num_steps)), status=tr.status_counts(),
                       **accuracy(flat_theta(tr.weights), ref))
            print(f"{p.name}: {name:21s} rtol {rtol:g}: {row['steps']} steps "
                  f"({row['rejected']} rejected), {dt:.2f} s, error median "
                  f"{row['accuracy']:.2e} worst {row['max_error']:.2e}, {row['status']}",
                  flush=True)
            rows.append(row)
            release()
    return rows


def release():
    """Let the compiled programs go: one process compiling every rule's programs ran out of
    memory mappings (an LLVM allocation failure, then a segfault)."""
    import gc

    import jax

    from gfsim import _exported

    jax.clear_caches()
    _exported._MEMO.clear()
    gc.collect()


def matched(rows, targets, key="steps"):
    """Total steps (or ``key``) of each rule at each target median error (log-log interpolation;
    None outside the measured range)."""
    out = {}
    for name in dict.fromkeys(r["rule"] for r in rows):
        pts = sorted((r["accuracy"], r[key]) for r in rows if r["rule"] == name)
        a, s = np.log([x[0] for x in pts]), np.log([x[1] for x in pts])
        out[name] = {f"{t:g}": (float(np.exp(np.interp(np.log(t), a, s)))
                                if a[0] <= np.log(t) <= a[-1] else None) for t in targets}
    return out


def extras(res):
    """The two single cases the docs quote: W-E quick's sliding seed (depth 2, square, seed 3,
    rtol 1e-4, one lane) under each rule, and the stiff ReLU tail of tests/test_stiff.py (no
    kink reached; solver="auto" switches to implicit steps) under the default and the PI rule
    throughout."""
    import jax
    import jax.numpy as jnp

    from gfsim.data import Dataset
    from gfsim.nets import MLP

    p = next(q for q in workloads.workload_e("quick") if q.name == "W-E depth 2 square")
    p = p.subset(np.array([3]), p.name + ", seed 3", "seed 3")
    ref, _ = M.reference(p)
    res["W-E seed 3"] = dict(rows=measure(p, ref, (1e-4,), 1))
    k = jax.random.split(jax.random.key(3), 4)
    data = Dataset(jnp.abs(jax.random.normal(k[0], (12, 3))) + 0.5,
                   jax.random.normal(k[1], (12, 2)))
    net = MLP.from_weights([jnp.abs(jax.random.normal(k[2], (4, 3))) * 0.5 + 0.3,
                            0.3 * jax.random.normal(k[3], (2, 4))], "relu")
    rows = []
    for name, ctrl in rules(1e-8).items():
        if name not in ("default (PI at kinks)", "PI throughout"):
            continue
        tr = simulate(net, data, 1e4, num_saves=8, method=Events(controller=ctrl))
        rows.append(dict(rule=name, method=tr.method, status=str(tr.status_labels()),
                         steps=int(tr.num_steps), rejected=int(tr.num_rejected),
                         t_stiff=float(tr.t_stiff)))
        print("stiff ReLU tail:", rows[-1], flush=True)
    res["stiff ReLU tail"] = dict(rows=rows)


def main(out, we=False, only=(), gd=False, extra=False):
    res = {}
    cases = [(workloads.workload_a("full")[0], (1e-4, 1e-6, 1e-8), None, (1e-5, 1e-6, 1e-7, 1e-8)),
             (workloads.workload_b("quick")[0], (1e-4, 1e-6, 1e-8), None, (1e-5, 1e-6, 1e-7, 1e-8))]
    if we:
        cases += [(p, (1e-4, 1e-5), 1, (1e-4, 5e-5)) for p in workloads.workload_e("quick")
                  if "depth 2" in p.name]
    if only:
        cases = [c for c in cases if c[0].name in only]
    if os.path.exists(out):  # (a run with --only adds to the file)
        with open(out) as f:
            res = json.load(f)
    if extra:
        extras(res)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    for p, rtols, lanes, targets in cases:
        ref, _ = M.reference(p)
        if gd and p.name in res and p.workload == "W-E":
            rows = res[p.name]["rows"]  # (the rules measured before: GD added)
        else:
            rows = measure(p, ref, rtols, lanes)
        res[p.name] = dict(rows=rows, matched_steps=matched(rows, targets),
                           matched_s=matched(rows, targets, "steady_s"))
        if gd and p.workload == "W-E":
            fit = fit_first_order(M.bench_gd(p, ref, 1, memory=False), p.t1)
            res[p.name]["gd_fit"] = fit
            t_gd = fit["extrapolated"]["0.0001"]["time_s"]
            print(f"{p.name}: JAX GD to 1e-4 (first-order fit): {t_gd:.1f} s; gfsim faster by",
                  {n: round(t_gd / m["0.0001"], 2) for n, m in res[p.name]["matched_s"].items()
                   if m.get("0.0001")}, flush=True)
        for name in res[p.name]["matched_steps"]:
            print(f"{p.name}: {name:21s} at matched accuracy: steps",
                  {k: (None if v is None else round(v))
                   for k, v in res[p.name]["matched_steps"][name].items()}, "s",
                  {k: (None if v is None else round(v, 2))
                   for k, v in res[p.name]["matched_s"][name].items()}, flush=True)
        with open(out, "w") as f:  # (after each problem: a late failure keeps the rest)
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    args = sys.argv[2:]
    main(sys.argv[1], we="--we" in args,
         only=[args[i + 1] for i, a in enumerate(args) if a == "--only"], gd="--gd" in args,
         extra="--extras" in args)
