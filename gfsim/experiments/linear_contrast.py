"""Claim 1 (linear contrast): a depth-2 linear net from small init learns greedily, one mode of
the target at a time, with plateaus whose length grows like log(1/scale). A ReLU net of the same
widths, on the same data and from the same init, is run beside it."""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

import gfsim
from gfsim import analysis

from . import Claim, Result, Runs, pyplot, register_experiment, save_figure, store_name

SETTINGS = {
    "quick": dict(scales=(1e-2, 1e-3, 1e-4), seeds=8, t1=40.0, num_saves=150, rtol=1e-8,
                  relu=True, relu_max_steps=4_000),
    "full": dict(scales=(1e-2, 1e-3, 1e-4, 1e-5, 1e-6), seeds=32, t1=40.0, num_saves=200,
                 rtol=1e-8, relu=True, relu_max_steps=20_000),
    "tiny": dict(scales=(1e-2, 1e-3), seeds=4, t1=30.0, num_saves=100, rtol=1e-8,
                 relu=True, relu_max_steps=2_000),  # tests
}
TARGET = (3.0, 2.0, 1.0)  # singular values of the target map: rank 3
D = 8  # d_in = hidden width = d_out
N_POINTS = 8  # whitened inputs need n >= d_in
DATA_KEY = 1
NET_KEY = 2
FIRST_SAVE = 1e-3


def problem(cfg: dict):
    """The data and the batch of initial weights (scale-major: run = scale_index * seeds + seed).

    Every scale uses the same key, so seed i at scale c is c times one fixed random draw: the
    initial strength of every mode is then exactly proportional to c^2."""
    s = np.asarray(TARGET)
    data = gfsim.data.whitened_regression(jax.random.key(DATA_KEY), N_POINTS, D, D, s)
    per_scale = [
        gfsim.MLP((D, D, D), "linear", key=jax.random.key(NET_KEY), init="normal", scale=c,
                  runs=cfg["seeds"]).weights
        for c in cfg["scales"]
    ]
    weights = [np.concatenate([w[layer] for w in per_scale]) for layer in range(2)]
    return data, weights


def initial_mode_strength(weights, A: np.ndarray, r: int) -> np.ndarray:
    """Effective initial strength a0 of each of the top ``r`` modes of A (runs, r).

    Linearising GF around small weights, p = W1 v_i and q = W2^T u_i obey p' = s_i q, q' = s_i p,
    so (p + q)/2 grows like exp(s_i t) and p - q decays; the mode's strength u_i^T W2 W1 v_i then
    grows like ||(p0 + q0)/2||^2 exp(2 s_i t), the start of Saxe's sigmoid with
    a0 = ||(p0 + q0)/2||^2."""
    U, _, Vt = np.linalg.svd(A)
    p = np.einsum("rhi,ik->rhk", weights[0], Vt[:r].T)
    q = np.einsum("roh,ok->rhk", weights[1], U[:, :r])
    return np.sum(((p + q) / 2) ** 2, axis=1)


def saxe_half_time(s, a0):
    """Time at which a(t) = s / (1 + (s/a0 - 1) exp(-2 s t)) reaches s/2."""
    return np.log(s / a0 - 1.0) / (2.0 * s)


def crossing_times(values: np.ndarray, ts: np.ndarray, level: float) -> np.ndarray:
    """First time each run's ``values`` (runs, T) reaches ``level``, interpolated linearly in
    log t between save times; NaN if never."""
    out = np.full(values.shape[0], np.nan)
    for run in range(values.shape[0]):
        above = np.nonzero(values[run] >= level)[0]
        if above.size == 0:
            continue
        i = above[0]
        if i == 0 or ts[i - 1] <= 0:
            out[run] = ts[i]
            continue
        lo, hi = np.log(ts[i - 1]), np.log(ts[i])
        v0, v1 = values[run, i - 1], values[run, i]
        out[run] = math.exp(lo + (level - v0) * (hi - lo) / (v1 - v0))
    return out


def fit_slope(t_half: np.ndarray, log_inv_scale: np.ndarray, seed: np.ndarray) -> float:
    """Least-squares slope of t_half against ln(1/scale) with one intercept per seed."""
    x = log_inv_scale.copy()
    y = t_half.copy()
    for s in np.unique(seed):
        m = seed == s
        x[m] -= x[m].mean()
        y[m] -= y[m].mean()
    return float(np.sum(x * y) / np.sum(x * x))


def _figure(path, ts, scales, seeds, sv, s, t_pred, t_half, log_inv, relu):
    plt = pyplot()

    ncols = len(scales) + 1 + (relu is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(3.3 * ncols, 3.4), squeeze=False)
    axes = axes[0]
    t = ts[1:]
    for j, c in enumerate(scales):
        ax = axes[j]
        run = j * seeds  # seed 0 at this scale
        for k in range(sv.shape[-1]):
            ax.plot(t, sv[run, 1:, k], color=f"C{k}" if k < len(s) else "0.6",
                    lw=1.2 if k < len(s) else 0.7)
        for k, sk in enumerate(s):
            ax.axhline(sk, color=f"C{k}", ls=":", lw=0.8)
            ax.axvline(t_pred[run, k], color=f"C{k}", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-2 * c**2, 2 * max(s))
        ax.set_title(f"linear, scale {c:g} (seed 0)", fontsize=8)
        ax.set_xlabel("t (sum convention)", fontsize=8)
        if j == 0:
            ax.set_ylabel("singular values of W2 W1", fontsize=8)
    ax = axes[len(scales)]
    for k, sk in enumerate(s):
        ax.plot(log_inv, t_half[:, k], "o", ms=3, color=f"C{k}", label=f"mode {k + 1} (s={sk:g})")
        xs = np.linspace(log_inv.min(), log_inv.max(), 2)
        off = np.mean(t_half[:, k] - log_inv / sk)
        ax.plot(xs, off + xs / sk, color=f"C{k}", lw=0.8, ls="--")
    ax.set_xlabel("ln(1/scale)", fontsize=8)
    ax.set_ylabel("half time", fontsize=8)
    ax.set_title("half times; dashed: slope 1/s_k", fontsize=8)
    ax.legend(fontsize=6)
    if relu is not None:
        ax = axes[-1]
        run = (len(scales) - 1) * seeds
        for k in range(relu["sv_w1"].shape[-1]):
            ax.plot(t, relu["sv_w1"][run, 1:, k], color=f"C{k}", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"ReLU, scale {scales[-1]:g} (seed 0): sv of W1\nfinal loss "
                     f"{relu['loss'][run]:.2g}, sr(W1) {relu['sr_w1'][run]:.2f}", fontsize=8)
        ax.set_xlabel("t (sum convention)", fontsize=8)
    fig.suptitle("Claim 1: greedy low-rank learning of a depth-2 linear net (target s = "
                 f"{TARGET}), ReLU beside it", fontsize=9)
    save_figure(fig, path)


@register_experiment("linear")
def run(profile: str, out_dir: str, progress=None) -> Result:
    cfg = SETTINGS[profile]
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    s = np.asarray(TARGET)
    r = len(s)
    scales, seeds = tuple(cfg["scales"]), cfg["seeds"]
    data, weights = problem(cfg)
    X, Y = np.asarray(data.X), np.asarray(data.Y)
    A = Y.T @ X  # input-output correlation = target map (whitened inputs)
    run_scale = np.repeat(np.asarray(scales), seeds)
    run_seed = np.tile(np.arange(seeds), len(scales))
    log_inv = np.log(1.0 / run_scale)

    t1 = cfg["t1"]
    ts = np.concatenate([[0.0], np.geomspace(FIRST_SAVE, t1, cfg["num_saves"] - 1)])
    net = gfsim.MLP.from_weights(weights, "linear")
    tr = gfsim.simulate(net, data, t1, ts=ts, reduction="sum", rtol=cfg["rtol"],
                        max_steps=20_000)
    if progress is not None:
        progress("linear: linear net")
    e2e = np.asarray(analysis.end_to_end(tr.weights))  # (runs, T, d_out, d_in)
    sv = np.asarray(analysis.singular_values(e2e))
    eff = np.asarray(analysis.effective_rank(e2e))
    final_e2e = np.asarray(analysis.end_to_end(tr.final_weights))
    final_loss = np.asarray(tr.final_loss)
    status = np.asarray(tr.status)

    a0 = initial_mode_strength(weights, A, r)
    t_pred = saxe_half_time(s[None], a0)
    t_half = np.stack([crossing_times(sv[..., k], ts, s[k] / 2) for k in range(r)], 1)
    # Strength of the next mode when one mode is half learned (greedy = small).
    next_share = np.full((len(t_half), r - 1), np.nan)
    for k in range(r - 1):
        for i in range(len(t_half)):
            if np.isfinite(t_half[i, k]):
                next_share[i, k] = np.interp(np.log(t_half[i, k]), np.log(ts[1:]),
                                             sv[i, 1:, k + 1]) / s[k + 1]
    ordered = np.all(np.diff(t_half, axis=1) > 0, axis=1)
    slopes = np.array([fit_slope(t_half[:, k], log_inv, run_seed) for k in range(r)])
    rel_err = np.abs(t_half - t_pred) / t_pred
    p = s / s.sum()
    eff_analytic = float(np.exp(-np.sum(p * np.log(p))))
    eff_final = eff[:, -1]
    num_rank = np.asarray(analysis.numerical_rank(final_e2e, tol=1e-2))
    # Effective rank on the plateau between modes 1 and 2 (geometric middle of the half times).
    mid = np.sqrt(t_half[:, 0] * t_half[:, 1])
    eff_mid = np.array([np.interp(np.log(m), np.log(ts[1:]), eff[i, 1:])
                        for i, m in enumerate(mid)])

    relu = None
    if cfg["relu"]:
        rnet = gfsim.MLP.from_weights(weights, "relu")
        rtr = gfsim.simulate(rnet, data, t1, ts=ts, reduction="sum", rtol=cfg["rtol"],
                             max_steps=cfg["relu_max_steps"])
        relu = dict(
            loss=np.asarray(rtr.final_loss),
            status=np.asarray(rtr.status),
            t_final=np.asarray(rtr.t_final),
            sr_w1=np.asarray(analysis.stable_rank(rtr.final_weights[0])),
            sv_w1=np.asarray(analysis.singular_values(rtr.weights[0])),
        )
        if progress is not None:
            progress("linear: relu net")

    fig = "linear_singular_values.png"
    _figure(os.path.join(out_dir, fig), ts, scales, seeds, sv, s, t_pred, t_half, log_inv, relu)
    runs = Runs()
    fixed = dict(dataset="whitened_regression", n=N_POINTS, dim=D, width=D, depth=2,
                 init="normal", init_scale=run_scale, seed=run_seed, t1=t1, rtol=cfg["rtol"],
                 loss="square", reduction="sum")
    # the solver each run used: auto (explicit, implicit where stiff) for the linear nets, its
    # explicit Tsit5 for the ReLU nets (the event solver's)
    runs.add(tr, coords=dict(fixed, activation="linear", max_steps=20_000, solver="auto"), extra={
        "e2e_singular_values": (("run", "time", "e2e_sv"), sv),
        "effective_rank": (("run", "time"), eff),
        "final_e2e": (("run", "e2e_out", "e2e_in"), final_e2e),
        "a0": (("run", "mode"), a0), "t_half": (("run", "mode"), t_half),
        "t_pred": (("run", "mode"), t_pred), "next_share": (("run", "next_mode"), next_share),
        "numerical_rank": num_rank, "effective_rank_mid": eff_mid})
    if relu is not None:
        runs.add(rtr, coords=dict(fixed, activation="relu", max_steps=cfg["relu_max_steps"],
                                  solver="tsit5"),
                 extra={"stable_rank_W1": relu["sr_w1"]})
    runs.array("target", s, ("mode",))
    runs.array("A", A, ("e2e_out", "e2e_in"))
    runs.array("slopes", slopes, ("mode",))
    runs.array("expected_slopes", 1.0 / s, ("mode",))
    runs.array("scales", np.asarray(scales), ("scale",))
    runs.array("effective_rank_analytic", eff_analytic)

    # ---- claims ----
    linear_stalled = int(np.sum(status != gfsim.Status.REACHED_T1))
    smallest = run_scale == min(scales)
    ok_seq = bool(ordered.all()) and bool(np.nanmax(next_share[smallest]) < 0.1)
    share_txt = "; ".join(
        f"scale {c:g}: mode {k + 2} at {np.nanmedian(next_share[run_scale == c, k]):.1%} "
        f"(max {np.nanmax(next_share[run_scale == c, k]):.1%})"
        for c in scales for k in range(r - 1))
    setting = (f"widths ({D},{D},{D}) linear, whitened regression n={N_POINTS}, target s = "
               f"{tuple(TARGET)}, init 'normal' scales {scales}, {seeds} seeds each, square loss "
               f"sum reduction, t1 = {t1:g}, rtol {cfg['rtol']:g}")
    claims = [Claim(
        claim="Claim 1 (linear contrast): greedy low-rank learning - the singular values of "
        "W2 W1 are picked up one at a time, larger first",
        setting=setting,
        measured=f"half-time order t1/2(s=3) < t1/2(s=2) < t1/2(s=1) in {int(ordered.sum())} of "
        f"{len(ordered)} runs; strength of the next mode (share of its target) when a mode is "
        f"half learned: {share_txt}; effective rank of W2 W1: median {np.median(eff[:, 0]):.2f} "
        f"at t=0, {np.median(eff_mid):.2f} on the plateau between modes 1 and 2, "
        f"{np.median(eff_final):.4f} at t1 (analytic exp H(s/sum s) = {eff_analytic:.4f}; "
        f"numerical rank at tol 1e-2: {sorted(set(num_rank.tolist()))}); runs not reaching t1: "
        f"{linear_stalled}",
        verdict="agrees" if ok_seq and linear_stalled == 0 else "disagrees",
    )]
    slope_txt = ", ".join(f"mode {k + 1}: {slopes[k]:.4f} (1/s = {1 / s[k]:.4f})"
                          for k in range(r))
    err_txt = ", ".join(f"mode {k + 1}: median {np.median(rel_err[:, k]):.1e}, max "
                        f"{np.max(rel_err[:, k]):.1e}" for k in range(r))
    ok_slope = abs(slopes[0] * s[0] - 1) < 0.05 and np.median(rel_err[:, 0]) < 0.02
    claims.append(Claim(
        claim="Claim 1: plateau length grows like log(1/scale). Saxe's closed form "
        "a(t) = s/(1+(s/a0-1)exp(-2st)) with a0 proportional to scale^2 gives a half time "
        "ln(s/a0-1)/(2s), i.e. slope 1/s per unit of ln(1/scale)",
        setting=setting + "; a0 per run and mode from the initial weights, ||(W1 v + W2^T u)/2||^2",
        measured=f"fitted slope of the half time vs ln(1/scale) (one intercept per seed): "
        f"{slope_txt}; measured vs closed-form half time, relative error: {err_txt}",
        verdict="agrees" if ok_slope else "disagrees",
    ))

    notes = [
        "The slope of the half time against ln(1/scale) is 1/s, not 1/(2s): the end-to-end "
        "strength of a mode starts at a0 ~ scale^2 (a product of two layers), so "
        "ln(1/a0) = 2 ln(1/scale) + const. Modes 2 and 3 deviate more from the decoupled "
        "closed form than mode 1 because a random (non-aligned) init couples the modes in the "
        "hidden layer until the learned modes have separated.",
        "The effective rank (Roy & Vetterli) weights singular values by size, so at convergence "
        f"it is exp H(s/sum s) = {eff_analytic:.4f} for s = {tuple(TARGET)}, not 3; the "
        "numerical rank is 3. The small residual singular values are the init's components in "
        "the target's null space, which GF shrinks only polynomially (the loss floor at t1: "
        f"max {np.max(final_loss):.1e}).",
    ]
    if relu is not None:
        rs = relu["status"]
        stalled = int(np.sum(rs == gfsim.Status.MAX_STEPS))
        ok = rs != gfsim.Status.MAX_STEPS
        conv = ok & (relu["loss"] < 1e-4)
        per_scale = "; ".join(
            f"scale {c:g}: median final loss {np.median(relu['loss'][ok & (run_scale == c)]):.2g}, "
            f"median sr(W1) {np.median(relu['sr_w1'][ok & (run_scale == c)]):.2f}"
            for c in scales if np.any(ok & (run_scale == c)))
        notes.append(
            f"ReLU net beside it (same widths, data and init; not a claim of the paper): "
            f"{int(conv.sum())} of {len(rs)} runs reach loss < 1e-4; stalled (status max_steps, "
            f"sliding along a ReLU kink, budget {cfg['relu_max_steps']}): {stalled}; over the "
            f"runs that did not stall: {per_scale}. From this init most ReLU runs are still at "
            "loss >= 1e-4 at t1; their singular values of W1 are in the last panel.")
    return Result(
        name="linear",
        title="Linear contrast: greedy low-rank learning of a depth-2 linear net",
        claims=claims,
        figures=[fig],
        data_file=store_name("linear"),
        data=runs.dataset({"data_key": DATA_KEY, "net_key": NET_KEY, "e2e": "e2e_*: the "
                           "end-to-end map W2 W1 (linear runs; NaN on the ReLU runs)"}),
        settings=dict(cfg, scales=list(scales), target=list(TARGET), widths=[D, D, D],
                      n=N_POINTS, init="normal", loss="square", reduction="sum",
                      solver="auto", data_key=DATA_KEY, net_key=NET_KEY),
        seconds=time.perf_counter() - start,
        notes=notes,
    )
