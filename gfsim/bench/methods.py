"""The methods a benchmark compares on a :class:`~gfsim.bench.problem.Problem`: gfsim, the
Dopri8 reference, hand-written Diffrax, gradient descent in JAX and in PyTorch, and scipy.

Every method returns rows (dicts) with the same keys where they apply: ``family`` (one line in
the plots), ``method``, ``knob``, ``accuracy`` / ``frac_above_1e3`` / ``max_error`` (against the
reference), ``steady_s`` (median of repeats after the first call), ``first_call_s`` (compile +
run), step and vector-field-evaluation counts, ``lockstep_waste``, ``balance_drift`` and
``memory``. scipy and torch are imported here, lazily; a missing one gives a ``skipped`` record.
"""

from __future__ import annotations

import functools
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import analysis
from ..data import Dataset
from ..descent import gd
from ..flow import objective, simulate
from ..methods import resolve_method
from ..nets import MLP
from .measure import (
    accuracy,
    compiled_memory,
    first_call,
    flat_init,
    flat_theta,
    median_time,
    unflatten,
)
from .problem import Problem, hand_loss

REF_RTOL, REF_ATOL = 1e-12, 1e-15
# Timed repeats of one knob stop once they add up to this many seconds (slow knobs get fewer
# repeats; the number taken is in each row's steady_all_s).
REPEAT_BUDGET_S = 3.0


def evals_per_step(solver: diffrax.AbstractERK) -> int:
    """Vector-field evaluations per attempted step of an explicit RK solver (stages, less one
    when the last stage is reused)."""
    tab = solver.tableau
    return len(tab.c) + 1 - int(bool(tab.fsal))


TSIT5_EVALS = evals_per_step(diffrax.Tsit5())


def _steps(num_steps, num_rejected=None, per_step=TSIT5_EVALS) -> dict:
    s = np.atleast_1d(np.asarray(num_steps))
    out = dict(steps_max=int(s.max()), steps_median=float(np.median(s)),
               field_evals_median=float(per_step * np.median(s)),
               lockstep_field_evals=int(per_step * s.max()),
               lockstep_waste=0.0 if s.max() == 0 else float(1 - s.sum() / (s.max() * s.size)))
    if num_rejected is not None:
        r = np.atleast_1d(np.asarray(num_rejected))
        out.update(accepted_median=float(np.median(s - r)), rejected_median=float(np.median(r)))
    return out


def _drift(weights, kind) -> dict:
    d = np.asarray(analysis.balance_drift(weights, kind=kind))
    d = d[np.isfinite(d)]
    if d.size == 0:
        return dict(balance_drift_median=None, balance_drift_max=None)
    return dict(balance_drift_median=float(np.median(d)), balance_drift_max=float(np.max(d)))


def _data_args(p: Problem):
    d = p.data
    return d.X, d.Y, d.mask


def _sim_kwargs(p: Problem, **kw):
    return dict(ts=p.ts, loss=p.loss, reduction=p.reduction, **kw)


# ---------------------------------------------------------------------------------------------


def reference(p: Problem):
    """Dopri8 at rtol 1e-12, atol 1e-15 with ``p.reference_method``: (theta_ref (runs, T, P),
    info). Raises if a run does not reach t1."""
    kw = _sim_kwargs(p, solver="dopri8", rtol=REF_RTOL, atol=REF_ATOL,
                     max_steps=p.ref_max_steps, method=p.reference_method)
    tr, first = first_call(lambda: simulate(p.net, p.data, p.t1, **kw))
    status = tr.status_counts()
    method = resolve_method(p.reference_method, p.net.activation_fn).name
    if status.get("reached_t1", 0) != p.runs:
        raise RuntimeError(f"{p.name}: the reference (dopri8, method={method}) did not reach t1 "
                           f"in every run: {status}")
    info = dict(solver="dopri8", method=method, rtol=REF_RTOL, atol=REF_ATOL, first_call_s=first,
                status=status, **_steps(tr.num_steps, tr.num_rejected,
                                        evals_per_step(diffrax.Dopri8())),
                **_drift(tr.weights, p.balance_kind))
    if tr.num_slides is not None:
        info["slides_per_run"] = np.asarray(tr.num_slides).tolist()
        info["crossings_median"] = float(np.median(np.asarray(tr.num_crossings)))
    return flat_theta(tr.weights), info


def bench_gfsim(p: Problem, ref, repeats, *, rtols=None, method="auto", memory=True):
    """gfsim.simulate (Tsit5 + PID) at each rtol, as a user calls it."""
    resolved = resolve_method(method, p.net.activation_fn).name
    rows = []
    for i, r in enumerate(p.rtols if rtols is None else rtols):
        kw = _sim_kwargs(p, rtol=r, max_steps=p.max_steps, method=method)
        fn = functools.partial(simulate, p.net, p.data, p.t1, **kw)
        tr, first = first_call(fn)
        steady, all_ = median_time(lambda fn=fn: fn().weights, repeats, REPEAT_BUDGET_S)
        row = dict(family="gfsim" if method == "auto" else f"gfsim {resolved}",
                   method=f"gfsim tsit5 ({resolved})", knob=f"rtol={r:g}", rtol=r,
                   steady_s=steady, steady_all_s=all_, first_call_s=first,
                   trajectory_method=tr.method,
                   status=tr.status_counts(), **_steps(tr.num_steps, tr.num_rejected),
                   **_drift(tr.weights, p.balance_kind),
                   **accuracy(flat_theta(tr.weights), ref))
        if tr.num_slides is not None:
            row["slides_median"] = float(np.median(np.asarray(tr.num_slides)))
            row["crossings_median"] = float(np.median(np.asarray(tr.num_crossings)))
        if memory and i == 0:

            def program(ws, X, Y, mask, kw=kw, act=p.net.activation):
                d = Dataset(X, Y, mask)
                return simulate(MLP.from_weights(ws, activation=act), d, p.t1, **kw).weights

            row["memory"] = compiled_memory(program, p.net.weights, *_data_args(p))
        rows.append(row)
    return rows


@functools.cache
def _hand_solver(widths, activation, reduction, data_batched, has_mask, max_steps,
                 loss_name="square"):
    """Raw Diffrax written by hand: jit(vmap(diffeqsolve)) of Tsit5 + PID on flat parameters."""
    loss = functools.partial(hand_loss, widths=widths, activation=activation,
                             reduction=reduction, loss=loss_name)

    def solve_one(theta0, X, Y, mask, t1, ts, rtol):
        def field(t, y, args):
            return -jax.grad(loss)(y, *args)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Tsit5(), t0=0.0, t1=t1, dt0=None, y0=theta0,
            args=(X, Y, mask), saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=rtol * 1e-3),
            max_steps=max_steps, throw=False)
        return sol.ys, sol.stats["num_steps"], sol.stats["num_rejected_steps"]

    d = 0 if data_batched else None
    return jax.jit(jax.vmap(solve_one, in_axes=(0, d, d, d if has_mask else None, None, None,
                                                None)))


def bench_hand_diffrax(p: Problem, ref, repeats, *, rtols=None, memory=True):
    """The same ODE written by hand in Diffrax: what gfsim must not be slower than."""
    solve = _hand_solver(p.widths, p.net.activation, p.reduction, p.data.is_batched,
                         p.data.mask is not None, p.max_steps, p.loss)
    theta0 = jnp.asarray(flat_init(p.net.weights))
    args = (theta0, *_data_args(p), jnp.asarray(float(p.t1)), jnp.asarray(p.ts))
    rows = []
    for i, r in enumerate(p.rtols if rtols is None else rtols):
        rj = jnp.asarray(r)
        fn = lambda rj=rj: solve(*args, rj)  # noqa: E731
        (ys, steps, rej), first = first_call(fn)
        steady, all_ = median_time(fn, repeats, REPEAT_BUDGET_S)
        ys = np.asarray(ys)
        ys = np.where(np.isfinite(ys), ys, np.nan)  # slots a stalled run never reached
        row = dict(family="hand_diffrax", method="hand-written diffrax tsit5 (jit(vmap))",
                   knob=f"rtol={r:g}", rtol=r, steady_s=steady, steady_all_s=all_,
                   first_call_s=first,
                   runs_at_max_steps=int(np.sum(np.asarray(steps) >= p.max_steps)),
                   **_steps(steps, rej),
                   **_drift(unflatten(ys, p.widths), p.balance_kind), **accuracy(ys, ref))
        if memory and i == 0:
            row["memory"] = compiled_memory(solve, *args, rj)
        rows.append(row)
    return rows


def bench_gd(p: Problem, ref, repeats, *, steps_list=None, memory=True):
    """Full-batch GD in JAX (gfsim.gd: lax.scan + vmap) at lr = t1 / steps."""
    rows = []
    for i, steps in enumerate(p.gd_steps if steps_list is None else steps_list):
        lr = float(p.t1) / steps
        save = np.round(p.ts / lr).astype(np.int64)
        fn = functools.partial(gd, p.net, p.data, lr, steps, save_steps=save, loss=p.loss,
                               reduction=p.reduction)
        tr, first = first_call(fn)
        steady, all_ = median_time(lambda fn=fn: fn().weights, repeats, REPEAT_BUDGET_S)
        row = dict(family="gd_jax", method="GD, JAX (gfsim.gd)", knob=f"lr={lr:.3g}", lr=lr,
                   steps=steps, steady_s=steady, steady_all_s=all_, first_call_s=first,
                   s_per_step=steady / steps, field_evals_median=float(steps),
                   lockstep_field_evals=steps, lockstep_waste=0.0,
                   **_drift(tr.weights, p.balance_kind), **accuracy(flat_theta(tr.weights), ref))
        if memory and i == 0:

            def program(ws, X, Y, mask, lr=lr, steps=steps, save=save, act=p.net.activation):
                n = MLP.from_weights(ws, activation=act)
                return gd(n, Dataset(X, Y, mask), lr, steps, save_steps=save, loss=p.loss,
                          reduction=p.reduction).weights

            row["memory"] = compiled_memory(program, p.net.weights, *_data_args(p))
        rows.append(row)
    return rows


class _Budget(Exception):
    pass


def bench_scipy(p: Problem, ref, *, rtols=None, subset=None, max_evals=None):
    """scipy.integrate.solve_ivp (DOP853) per run in a Python loop on the flat parameters, with
    a jax.jit'ed gradient; timed on ``subset`` runs and scaled to all runs. A run that needs more
    than ``max_evals`` gradient evaluations (a sliding flow makes DOP853 grind for millions) is
    stopped there and counts as not reaching t1."""
    try:
        from scipy.integrate import solve_ivp
    except Exception as e:  # noqa: BLE001
        return dict(skipped=f"scipy unavailable: {e} (pip install 'gfsim[bench]')")
    subset = min(p.scipy_subset if subset is None else subset, p.runs)
    max_evals = p.scipy_max_evals if max_evals is None else max_evals
    theta0 = flat_init(p.net.weights)[:subset]
    loss = functools.partial(hand_loss, widths=p.widths, activation=p.net.activation,
                             reduction=p.reduction, loss=p.loss)
    grad = jax.jit(jax.grad(loss))
    datas = [p.run_data(i) for i in range(subset)]
    jax.block_until_ready(grad(jnp.asarray(theta0[0]), datas[0].X, datas[0].Y, datas[0].mask))
    rows = []
    for r in p.scipy_rtols if rtols is None else rtols:
        t = time.perf_counter()
        out, nfev, ok = [], 0, 0
        for i in range(subset):
            d, count = datas[i], [0]

            def fun(t, y, d=d, count=count):
                count[0] += 1
                if count[0] > max_evals:
                    raise _Budget
                return -np.asarray(grad(y, d.X, d.Y, d.mask))

            y = np.full((len(p.ts), theta0.shape[1]), np.nan)
            try:
                sol = solve_ivp(fun, (0.0, float(p.t1)), theta0[i], method="DOP853",
                                t_eval=p.ts, rtol=r, atol=r * 1e-3)
                y[:sol.y.shape[1]] = sol.y.T
                ok += int(sol.success)
            except _Budget:
                pass
            out.append(y)
            nfev += min(count[0], max_evals)
        elapsed = time.perf_counter() - t
        theta = np.stack(out)
        rows.append(dict(family="scipy", method="scipy solve_ivp DOP853 (loop, jit grad)",
                         knob=f"rtol={r:g}", rtol=r, runs_timed=subset, runs_succeeded=ok,
                         max_evals=max_evals,
                         measured_s=elapsed, steady_s=elapsed * p.runs / subset,
                         scaled=f"timed on {subset} runs, scaled x{p.runs / subset:g}",
                         field_evals_median=nfev / subset,
                         **_drift(unflatten(theta, p.widths), p.balance_kind),
                         **accuracy(theta, ref[:subset])))
    return rows


def _torch_gd(torch, Ws, X, Y, mask, act, reduction, lr, steps, save=(), loss="square"):
    """Full-batch GD on a batch of nets (R, out, in) per layer with bmm and autograd (square or
    exponential loss)."""
    if loss not in ("square", "exponential"):
        raise ValueError(f"_torch_gd: loss={loss!r}; allowed: square, exponential.")
    R = Ws[0].shape[0]

    def expand(a):
        return None if a is None else (a if a.dim() == 3 else a.unsqueeze(0).expand(R, -1, -1))

    Xb, Yb, Mb = expand(X), expand(Y), expand(mask)
    saved, save = {}, set(int(s) for s in save)
    for k in range(steps + 1):
        if k in save:
            saved[k] = torch.cat([w.detach().reshape(R, -1) for w in Ws], 1).clone()
        if k == steps:
            break
        h = Xb
        for j, W in enumerate(Ws):
            h = torch.bmm(h, W.transpose(1, 2))
            if j < len(Ws) - 1 and act == "relu":
                h = torch.relu(h)
        r2 = (h - Yb) ** 2 if loss == "square" else torch.exp(-Yb * h)
        if Mb is not None:
            r2 = torch.where(Mb > 0, r2, torch.zeros_like(r2))  # (not r2 * Mb: inf * 0)
        if reduction == "sum":
            per_run = (0.5 if loss == "square" else 1.0) * r2.sum(dim=(1, 2))
        else:
            per_run = r2.sum(dim=(1, 2)) / (Mb.sum(dim=(1, 2)) if Mb is not None
                                            else r2[0].numel())
        per_run.sum().backward()  # summed over runs: each run gets its own gradient
        with torch.no_grad():
            for W in Ws:
                W -= lr * W.grad
                W.grad = None
    return saved


def bench_torch(p: Problem, ref, *, steps_list=None, max_steps=None, threads=1):
    """Full-batch GD in PyTorch (float64, CPU) batched with bmm, as the authors' code would be
    batched. Runs longer than ``max_steps`` are timed on that many steps and scaled.

    ``threads``: torch's intra-op threads (None leaves torch's default). One by default: in a
    process where JAX has run, torch with two threads on a 2-core CPU was 40-80x slower per
    step (its threads contend with XLA's thread pool); the small bmm's gain nothing from more."""
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return dict(skipped=f"torch unavailable: {e} (pip install 'gfsim[bench]')")
    if threads:
        torch.set_num_threads(threads)
    max_steps = p.torch_max_steps if max_steps is None else max_steps

    def t64(a):
        return None if a is None else torch.tensor(np.asarray(a), dtype=torch.float64)

    X, Y, M = (t64(a) for a in _data_args(p))
    act = p.net.activation

    def fresh():
        return [t64(w).requires_grad_() for w in p.net.weights]

    rows = []
    for steps in p.torch_steps if steps_list is None else steps_list:
        lr = float(p.t1) / steps
        save = np.round(p.ts / lr).astype(np.int64)
        _torch_gd(torch, fresh(), X, Y, M, act, p.reduction, lr, 5, loss=p.loss)  # warm up
        row = dict(family="torch", method="PyTorch GD (bmm, autograd, CPU)", knob=f"lr={lr:.3g}",
                   lr=lr, steps=steps, torch=torch.__version__, threads=torch.get_num_threads())
        if steps <= max_steps:
            t = time.perf_counter()
            saved = _torch_gd(torch, fresh(), X, Y, M, act, p.reduction, lr, steps, save,
                              loss=p.loss)
            row["steady_s"] = time.perf_counter() - t
            row["scaled"] = "full run timed"
            theta = np.stack([saved[int(s)].numpy() for s in save], axis=1)
            row.update(accuracy(theta, ref))
            row.update(_drift(unflatten(theta, p.widths), p.balance_kind))
        else:
            t = time.perf_counter()
            _torch_gd(torch, fresh(), X, Y, M, act, p.reduction, lr, max_steps, loss=p.loss)
            row["steady_s"] = (time.perf_counter() - t) * steps / max_steps
            row["scaled"] = f"timed {max_steps} steps, scaled x{steps / max_steps:g}"
            row["accuracy"] = None
            row["accuracy_note"] = "not run to t1; same algorithm as JAX GD at this lr"
        row["s_per_step"] = row["steady_s"] / steps
        rows.append(row)
    return rows


def bare_gradient_time(p: Problem, inner=1000):
    """Seconds per batched gradient evaluation of all runs of a problem (see
    :func:`batched_gradient_time`): the unit of the solver overhead."""
    return batched_gradient_time(p.net, p.data, p.loss, p.reduction, inner)


def batched_gradient_time(net, data, loss, reduction, inner=1000):
    """Seconds per batched gradient evaluation of all runs, amortised inside one compiled loop
    (no dispatch)."""
    params, skeleton = eqx.partition(net, eqx.is_array)

    def grad_one(q, d):
        return jax.grad(lambda q: objective(eqx.combine(q, skeleton), d, loss, reduction))(q)

    batched = jax.vmap(grad_one, in_axes=(0, 0 if data.is_batched else None))

    @jax.jit
    def loop(q, d):
        def body(_, q):
            g = batched(q, d)
            return jax.tree_util.tree_map(lambda a, b: a - 1e-12 * b, q, g)

        return jax.lax.fori_loop(0, inner, body, q)

    jax.block_until_ready(loop(params, data))
    med, _ = median_time(lambda: loop(params, data), 3)
    return med / inner
