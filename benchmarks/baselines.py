"""Time to accuracy of gfsim against the baselines a user would otherwise pick, on W-A
(../shared/benchmarks.md), measured side by side in one process.

    python benchmarks/baselines.py [--seeds 64] [--t1 300] [--repeats 5]
        [--out benchmarks/results/baselines.json]

Workload W-A: the paper's size-2 dataset (gfsim.data.paper_pair()), MLP((2, 2, 2), ReLU,
init="disk", scale=1e-4), mean-reduction square loss, float64, ``--seeds`` runs.

Reference: gfsim.simulate with Dopri8 at rtol 1e-12, atol 1e-15 (every run must reach t1).
Accuracy of a method = median over runs of max over the save times of
||theta - theta_ref|| / ||theta_ref|| (theta = all weights, flattened), plus the fraction of runs
above 1e-3. Methods:

1. gfsim.simulate (Tsit5 + PID) at several rtol: compile (first call) and steady state separately.
2. Gradient descent in JAX (gfsim.gd, lax.scan + vmap) at several lr; its error is fitted as
   C * lr (first order) and the lr and cost needed for 1e-4 / 1e-6 are EXTRAPOLATED from it
   (time proportional to steps).
3. scipy solve_ivp DOP853 per run (Python loop) on the flat parameters with a jax.jit'ed
   gradient, on a subset of runs; its time is scaled to the full seed count.
4. Hand-written Diffrax (jax.jit(jax.vmap(diffeqsolve))) of the same ODE: gfsim's overhead.
5. PyTorch full-batch GD batched with torch.bmm (float64, CPU); long runs are timed on a
   limited number of steps and scaled to the full step count.

scipy and torch are benchmark-only (the ``bench`` extra); a missing one is skipped and recorded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time

import diffrax
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import gfsim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time  # noqa: E402

WIDTHS = (2, 2, 2)
THRESH = 1e-3
TARGETS = (1e-4, 1e-6)


# ---------------------------------------------------------------------------------------------
# helpers


def bench_extra() -> dict:
    """Which of the ``bench`` extra's packages (scipy, torch) are importable, with versions.
    Imported here only: gfsim itself never imports them."""
    out = {}
    for name in ("scipy", "torch"):
        try:
            mod = importlib.import_module(name)
            out[name] = getattr(mod, "__version__", "unknown")
        except Exception as e:  # noqa: BLE001
            out[name] = None
            out[f"{name}_error"] = f"{type(e).__name__}: {e} (pip install 'gfsim[bench]')"
    return out


def _first(fn):
    t = time.perf_counter()
    r = jax.block_until_ready(fn())
    return r, time.perf_counter() - t


def save_times(t1: float) -> np.ndarray:
    """[0, 10, 30, 100, 300] for t1 = 300, scaled proportionally for other t1."""
    return float(t1) * np.array([0.0, 1 / 30, 0.1, 1 / 3, 1.0])


def setup(seeds: int, key: int = 0):
    data = gfsim.data.paper_pair()
    net = gfsim.MLP(WIDTHS, key=jax.random.key(key), init="disk", scale=1e-4, runs=seeds)
    return net, data


def flat_theta(weights) -> np.ndarray:
    """(runs, T, P) from per-layer saved weights (runs, T, out, in): W1 row-major, then W2..."""
    runs, T = weights[0].shape[:2]
    return np.concatenate([np.asarray(w).reshape(runs, T, -1) for w in weights], axis=-1)


def flat_init(net) -> np.ndarray:
    """(runs, P) initial parameters, same layout as :func:`flat_theta`."""
    runs = net.weights[0].shape[0]
    return np.concatenate([np.asarray(w).reshape(runs, -1) for w in net.weights], axis=-1)


def run_errors(theta: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per run: max over save times of ||theta - ref|| / ||ref||  (theta, ref: (runs, T, P))."""
    num = np.linalg.norm(theta - ref, axis=-1)
    den = np.linalg.norm(ref, axis=-1)
    rel = num / den
    rel = np.where(np.isfinite(rel), rel, np.inf)
    return rel.max(axis=-1)


def accuracy(theta, ref) -> dict:
    e = run_errors(theta, ref)
    return dict(accuracy=float(np.median(e)), frac_above_1e3=float(np.mean(e > THRESH)),
                max_error=float(np.max(e)))


def hand_loss(theta, X, Y):
    """The W-A loss written by hand on a flat parameter vector: mean (f - y)^2 of a bias-free
    ReLU MLP, f = W2 relu(W1 x) (the layout of :func:`flat_theta`)."""
    h, i = X, 0
    n_layers = len(WIDTHS) - 1
    for j, (fi, fo) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        W = theta[i:i + fi * fo].reshape(fo, fi)
        i += fi * fo
        h = h @ W.T
        if j < n_layers - 1:
            h = jax.nn.relu(h)
    return jnp.mean((h - Y) ** 2)


# ---------------------------------------------------------------------------------------------
# methods


def reference(net, data, t1, ts):
    """Dopri8 at rtol 1e-12, atol 1e-15: (theta_ref (runs, T, P), info)."""
    kw = dict(ts=ts, reduction="mean", solver="dopri8", rtol=1e-12, atol=1e-15,
              max_steps=1_000_000)
    tr, first = _first(lambda: gfsim.simulate(net, data, t1, **kw))
    status = tr.status_counts()
    if status.get("reached_t1", 0) != tr.runs:
        raise RuntimeError(f"reference did not reach t1 in every run: {status}")
    return flat_theta(tr.weights), dict(
        solver="dopri8", rtol=1e-12, atol=1e-15, first_call_s=first, status=status,
        max_steps=int(np.max(tr.num_steps)), median_steps=float(np.median(tr.num_steps)))


def bench_gfsim(net, data, t1, ts, ref, rtols, repeats):
    rows = []
    for r in rtols:
        fn = lambda r=r: gfsim.simulate(net, data, t1, ts=ts, reduction="mean", rtol=r)  # noqa: E731
        tr, first = _first(fn)
        steady, all_ = median_time(lambda fn=fn: fn().weights, repeats)
        rows.append(dict(method="gfsim (tsit5)", knob=f"rtol={r:g}", rtol=r, steady_s=steady,
                         steady_all_s=all_, first_call_s=first, status=tr.status_counts(),
                         max_steps=int(np.max(tr.num_steps)),
                         **accuracy(flat_theta(tr.weights), ref)))
    return rows


def bench_gd(net, data, t1, ts, ref, lrs, repeats):
    rows = []
    for lr in lrs:
        steps = int(round(t1 / lr))
        save = np.round(np.asarray(ts) / lr).astype(np.int64)
        if not np.allclose(save * lr, ts, rtol=1e-9, atol=1e-9):
            raise ValueError(f"lr={lr} does not divide the save times {ts}")
        fn = lambda lr=lr, steps=steps, save=save: gfsim.gd(  # noqa: E731
            net, data, lr, steps, save_steps=save, reduction="mean")
        tr, first = _first(fn)
        steady, all_ = median_time(lambda fn=fn: fn().weights, repeats)
        rows.append(dict(method="GD, JAX (gfsim.gd)", knob=f"lr={lr:g}", lr=lr, steps=steps,
                         steady_s=steady, steady_all_s=all_, first_call_s=first,
                         s_per_step=steady / steps, **accuracy(flat_theta(tr.weights), ref)))
    return rows


def fit_first_order(rows, t1, targets=TARGETS):
    """Fit accuracy = C * lr (least squares in log space with slope 1) and extrapolate the lr and
    the time (proportional to steps, at the measured cost per step of the smallest lr) needed for
    each target accuracy. Also returns the free log-log slope as a check of first order."""
    lr = np.array([r["lr"] for r in rows])
    err = np.array([r["accuracy"] for r in rows])
    ok = np.isfinite(err) & (err > 0)
    if ok.sum() == 0:
        return None
    logC = float(np.mean(np.log(err[ok]) - np.log(lr[ok])))
    C = math.exp(logC)
    slope = float(np.polyfit(np.log(lr[ok]), np.log(err[ok]), 1)[0]) if ok.sum() >= 2 else None
    per_step = min(rows, key=lambda r: r["lr"])["s_per_step"]
    out = dict(C=C, loglog_slope=slope, s_per_step=per_step, extrapolated={})
    for a in targets:
        lr_a = a / C
        steps = t1 / lr_a
        out["extrapolated"][f"{a:g}"] = dict(lr=lr_a, steps=steps, time_s=steps * per_step)
    return out


def bench_scipy(net, data, t1, ts, ref, rtols, subset, total_runs):
    try:
        from scipy.integrate import solve_ivp
    except Exception as e:  # noqa: BLE001
        return dict(skipped=f"scipy unavailable: {e}")
    theta0 = flat_init(net)[:subset]
    X, Y = data.X, data.Y
    grad = jax.jit(jax.grad(hand_loss))

    def fun(t, y):
        return -np.asarray(grad(y, X, Y))

    jax.block_until_ready(grad(jnp.asarray(theta0[0]), X, Y))  # compile outside the timing
    rows = []
    for r in rtols:
        t = time.perf_counter()
        out, nfev = [], 0
        for i in range(subset):
            sol = solve_ivp(fun, (0.0, float(t1)), theta0[i], method="DOP853", t_eval=ts,
                            rtol=r, atol=r * 1e-3)
            out.append(sol.y.T)
            nfev += sol.nfev
        elapsed = time.perf_counter() - t
        theta = np.stack(out)
        rows.append(dict(method="scipy solve_ivp DOP853 (loop, jit grad)", knob=f"rtol={r:g}",
                         rtol=r, runs_timed=subset, measured_s=elapsed,
                         steady_s=elapsed * total_runs / subset,
                         scaled=f"timed on {subset} runs, scaled x{total_runs / subset:g}",
                         mean_nfev=nfev / subset, **accuracy(theta, ref[:subset])))
    return rows


def _hand_solver():
    """Raw Diffrax written by hand for W-A: vmapped Tsit5 + PID on the flat parameters."""

    def solve_one(theta0, X, Y, t1, ts, rtol):
        field = lambda t, y, args: -jax.grad(hand_loss)(y, *args)  # noqa: E731
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), t0=0.0, t1=t1, dt0=None, y0=theta0,
            args=(X, Y), saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3),
            max_steps=100_000, throw=False)
        return sol.ys

    return jax.jit(jax.vmap(solve_one, in_axes=(0, None, None, None, None, None)))


def bench_hand_diffrax(net, data, t1, ts, ref, rtols, repeats):
    solve = _hand_solver()
    theta0 = jnp.asarray(flat_init(net))
    tsj = jnp.asarray(ts)
    t1j = jnp.asarray(float(t1))
    rows = []
    for r in rtols:
        rj = jnp.asarray(r)
        fn = lambda rj=rj: solve(theta0, data.X, data.Y, t1j, tsj, rj)  # noqa: E731
        ys, first = _first(fn)
        steady, all_ = median_time(fn, repeats)
        rows.append(dict(method="hand-written diffrax (jit(vmap))", knob=f"rtol={r:g}", rtol=r,
                         steady_s=steady, steady_all_s=all_, first_call_s=first,
                         **accuracy(np.asarray(ys), ref)))
    return rows


def _torch_gd(torch, W1, W2, X, Y, lr, steps, save=()):
    """Full-batch GD on a batch of nets (R, out, in) with bmm and autograd, in place."""
    R = W1.shape[0]
    Xb = X.unsqueeze(0).expand(R, -1, -1)
    Yb = Y.unsqueeze(0).expand(R, -1, -1)
    saved = {}
    save = set(int(s) for s in save)
    for k in range(steps + 1):
        if k in save:
            saved[k] = torch.cat([W1.detach().reshape(R, -1), W2.detach().reshape(R, -1)],
                                 1).clone()
        if k == steps:
            break
        H = torch.relu(torch.bmm(Xb, W1.transpose(1, 2)))
        out = torch.bmm(H, W2.transpose(1, 2))
        # Per-run MSELoss (mean over n * d_out), summed over runs so each run gets its own grad.
        loss = ((out - Yb) ** 2).mean(dim=(1, 2)).sum()
        loss.backward()
        with torch.no_grad():
            W1 -= lr * W1.grad
            W2 -= lr * W2.grad
        W1.grad = None
        W2.grad = None
    return saved


def bench_torch(net, data, t1, ts, ref, lrs, max_steps, threads=None):
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return dict(skipped=f"torch unavailable: {e} (pip install 'gfsim[bench]')")
    if threads:
        torch.set_num_threads(threads)
    X = torch.tensor(np.asarray(data.X), dtype=torch.float64)
    Y = torch.tensor(np.asarray(data.Y), dtype=torch.float64)
    rows = []
    for lr in lrs:
        steps = int(round(t1 / lr))
        save = np.round(np.asarray(ts) / lr).astype(np.int64)

        def fresh():
            w1 = torch.tensor(np.asarray(net.weights[0]), dtype=torch.float64).requires_grad_()
            w2 = torch.tensor(np.asarray(net.weights[1]), dtype=torch.float64).requires_grad_()
            return w1, w2

        _torch_gd(torch, *fresh(), X, Y, lr, 20)  # warm up
        row = dict(method="PyTorch GD (bmm, autograd, CPU)", knob=f"lr={lr:g}", lr=lr,
                   steps=steps, torch=torch.__version__, threads=torch.get_num_threads())
        if steps <= max_steps:
            t = time.perf_counter()
            saved = _torch_gd(torch, *fresh(), X, Y, lr, steps, save)
            row["steady_s"] = time.perf_counter() - t
            row["scaled"] = "full run timed"
            theta = np.stack([saved[int(s)].numpy() for s in save], axis=1)
            row.update(accuracy(theta, ref))
        else:
            t = time.perf_counter()
            _torch_gd(torch, *fresh(), X, Y, lr, max_steps)
            measured = time.perf_counter() - t
            row["steady_s"] = measured * steps / max_steps
            row["scaled"] = f"timed {max_steps} steps, scaled x{steps / max_steps:g}"
            row["accuracy"] = None
            row["accuracy_note"] = "not run to t1; same algorithm as JAX GD at this lr"
        row["s_per_step"] = row["steady_s"] / steps
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# tables


def _cheapest(rows, target):
    ok = [r for r in rows if r.get("accuracy") is not None and r["accuracy"] <= target]
    return min(ok, key=lambda r: r["steady_s"]) if ok else None


def add_ratios(res):
    """Ratio of each row's time to gfsim's cheapest time at the same or better accuracy."""
    g = res["gfsim"]
    for key in ("gfsim", "gd_jax", "scipy", "hand_diffrax", "torch"):
        rows = res.get(key)
        if not isinstance(rows, list):
            continue
        for r in rows:
            if r.get("accuracy") is None:
                # torch rows without a full run: compare at JAX GD's accuracy for the same lr
                same = [q for q in res["gd_jax"] if q["lr"] == r.get("lr")]
                acc = same[0]["accuracy"] if same else None
            else:
                acc = r["accuracy"]
            best = _cheapest(g, acc) if acc is not None else None
            r["gfsim_ref_knob"] = best["knob"] if best else None
            r["ratio_vs_gfsim"] = r["steady_s"] / best["steady_s"] if best else None


def headline(res, t1):
    """Time to accuracy 1e-4 / 1e-6: baseline / gfsim (extrapolated where marked)."""
    out = {}
    for a in TARGETS:
        key = f"{a:g}"
        g = _cheapest(res["gfsim"], a)
        h = dict(gfsim=dict(knob=g["knob"], time_s=g["steady_s"]) if g else None)
        # JAX GD: extrapolated from the first-order fit.
        fit = res.get("gd_fit")
        if fit:
            e = fit["extrapolated"][key]
            h["gd_jax"] = dict(time_s=e["time_s"], lr=e["lr"], extrapolated=True)
        # Torch GD: same lr as the JAX fit, at torch's measured cost per step.
        if isinstance(res.get("torch"), list) and fit:
            per = min(res["torch"], key=lambda r: r["lr"])["s_per_step"]
            e = fit["extrapolated"][key]
            h["torch"] = dict(time_s=e["steps"] * per, lr=e["lr"], extrapolated=True)
        for name in ("scipy", "hand_diffrax"):
            rows = res.get(name)
            if isinstance(rows, list):
                b = _cheapest(rows, a)
                h[name] = dict(knob=b["knob"], time_s=b["steady_s"], extrapolated=False,
                               scaled=b.get("scaled")) if b else None
        for name, v in h.items():
            if name != "gfsim" and v is not None:
                v["ratio"] = v["time_s"] / g["steady_s"] if g else None
        out[key] = h
    return out


def _fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def markdown(res) -> str:
    m = res["machine"]
    w = res["workload"]
    lines = [
        "# Baselines: time to accuracy on W-A",
        "",
        f"Workload: {w['description']}. Machine: {m['cpus']} CPUs, "
        f"{m['processor'] or m['platform']}, JAX {m['jax']} on {m['device']} "
        f"({m['backend']}). "
        f"Bench extra: scipy {res['bench_extra'].get('scipy')}, "
        f"torch {res['bench_extra'].get('torch')}.",
        f"Reference: Dopri8 rtol 1e-12 atol 1e-15, status {res['reference']['status']}. "
        f"Accuracy = median over runs of max over ts={list(w['ts'])} of "
        "||theta - theta_ref|| / ||theta_ref||. Steady time = median of "
        f"{w['repeats']} repeats after the first (compile) call. Ratio = method time / cheapest "
        "gfsim time at the same or better accuracy.",
        "",
        "| method | knob | accuracy | runs > 1e-3 | steady time (s) | first call (s) "
        "| ratio vs gfsim | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("gfsim", "hand_diffrax", "gd_jax", "torch", "scipy"):
        rows = res.get(key)
        if isinstance(rows, dict):
            lines.append(f"| {key} | - | - | - | - | - | - | skipped: {rows['skipped']} |")
            continue
        if not rows:
            continue
        for r in rows:
            note = r.get("scaled") or ""
            if r.get("accuracy_note"):
                note += "; " + r["accuracy_note"]
            if r.get("gfsim_ref_knob"):
                note += f" (vs gfsim {r['gfsim_ref_knob']})"
            lines.append(
                f"| {r['method']} | {r['knob']} | {_fmt(r.get('accuracy'))} | "
                f"{_fmt(r.get('frac_above_1e3'), '.2f')} | {_fmt(r['steady_s'])} | "
                f"{_fmt(r.get('first_call_s'))} | {_fmt(r.get('ratio_vs_gfsim'))} | "
                f"{note.strip('; ')} |")
    lines += ["", "First call: the rtol is traced, so only the first gfsim / hand-diffrax rtol "
              "compiles; GD recompiles per lr (the step count is static)."]
    if res.get("gfsim_over_hand"):
        lines += ["", "gfsim overhead vs hand-written Diffrax (gfsim time / hand time, same rtol): "
                  + ", ".join(f"rtol {k}: {v:.2f}" for k, v in res["gfsim_over_hand"].items())
                  + ". gfsim also saves the end state, the loss at every save time and a "
                  "finiteness check, which the hand version does not."]
    fit = res.get("gd_fit")
    if fit:
        lines += ["", f"GD first-order fit: accuracy = C * lr with C = {fit['C']:.3g} (free "
                  f"log-log slope {_fmt(fit['loglog_slope'])}); cost {fit['s_per_step']:.3g} s "
                  "per step (JAX, all runs)."]
    lines += ["", "## Time to accuracy: baseline / gfsim", "",
              "| target | gfsim (knob, s) | baseline | knob | time (s) | ratio | how |",
              "|---|---|---|---|---|---|---|"]
    for a, h in res["headline"].items():
        g = h["gfsim"]
        gs = f"{g['knob']}, {g['time_s']:.3g}" if g else "not reached"
        for name, v in h.items():
            if name == "gfsim":
                continue
            if v is None:
                lines.append(f"| {a} | {gs} | {name} | - | not reached at tested knobs | - | - |")
                continue
            knob = v.get("knob") or f"lr={v['lr']:.3g}"
            how = "EXTRAPOLATED (first-order fit)" if v.get("extrapolated") else (
                v.get("scaled") or "measured")
            lines.append(f"| {a} | {gs} | {name} | {knob} | {v['time_s']:.3g} | "
                         f"{_fmt(v.get('ratio'))} | {how} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def run(seeds=64, t1=300.0, repeats=5, rtols=(1e-4, 1e-6, 1e-8, 1e-10),
        lrs=(1e-2, 5e-3, 2.5e-3), scipy_rtols=(1e-6, 1e-8), scipy_subset=8,
        torch_lrs=(1e-2, 5e-3), torch_max_steps=60_000, skip=()):
    net, data = setup(seeds)
    ts = save_times(t1)
    ref, ref_info = reference(net, data, t1, ts)
    res = dict(
        machine=dict(platform=platform.platform(), processor=platform.processor(),
                     cpus=os.cpu_count(), device=jax.devices()[0].device_kind,
                     backend=jax.default_backend(), jax=jax.__version__),
        bench_extra=bench_extra(),
        workload=dict(description=f"W-A: paper_pair, MLP{WIDTHS} ReLU, disk r=1e-4, {seeds} "
                      f"seeds, t1={t1:g}, mean, float64", seeds=seeds, t1=t1,
                      ts=[float(x) for x in ts], repeats=repeats),
        reference=ref_info,
    )
    res["gfsim"] = bench_gfsim(net, data, t1, ts, ref, rtols, repeats)
    if "hand_diffrax" not in skip:
        res["hand_diffrax"] = bench_hand_diffrax(net, data, t1, ts, ref, rtols, repeats)
    res["gd_jax"] = bench_gd(net, data, t1, ts, ref, lrs, repeats)
    res["gd_fit"] = fit_first_order(res["gd_jax"], t1)
    if "scipy" not in skip:
        res["scipy"] = bench_scipy(net, data, t1, ts, ref, scipy_rtols,
                                   min(scipy_subset, seeds), seeds)
    if "torch" not in skip:
        res["torch"] = bench_torch(net, data, t1, ts, ref, torch_lrs, torch_max_steps)
    add_ratios(res)
    if isinstance(res.get("hand_diffrax"), list):
        res["gfsim_over_hand"] = {f"{g['rtol']:g}": g["steady_s"] / h["steady_s"]
                                  for g, h in zip(res["gfsim"], res["hand_diffrax"])}
    res["headline"] = headline(res, t1)
    return res


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
    res = run(seeds=args.seeds, t1=args.t1, repeats=args.repeats,
              scipy_subset=args.scipy_subset, torch_max_steps=args.torch_max_steps)
    res["total_wall_s"] = time.perf_counter() - t
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2, default=str)
    md = markdown(res)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
