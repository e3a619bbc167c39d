"""GF versus the authors' GD stand-in (lr 1e-4) on experiment A's runs: distance at matched times,
balancedness drift, and wall-clock."""

from __future__ import annotations

import os
import time

import jax
import numpy as np

import gfsim
from gfsim import analysis

from . import Claim, Result, Runs, pyplot, register_experiment, save_figure, store_name

SETTINGS = {
    # t1: the GF end time (experiment A's); t_gd: the simulated time GD is run to (steps = t_gd/lr).
    "quick": dict(seeds=16, t1=300.0, t_gd=30.0, lr=1e-4, num_saves=40, extra_saves=12,
                  rtol=1e-10, max_steps=20_000),
    "full": dict(seeds=64, t1=300.0, t_gd=300.0, lr=1e-4, num_saves=64, extra_saves=1,
                 rtol=1e-10, max_steps=20_000),
    "tiny": dict(seeds=8, t1=300.0, t_gd=30.0, lr=1e-4, num_saves=24, extra_saves=8,
                 rtol=1e-10, max_steps=5_000),  # tests
}
NET_KEY = 0  # experiment A's key; its first `seeds` runs are these (same split of the key)


def param_distance(a, b) -> np.ndarray:
    """||theta_a - theta_b|| / ||theta_b|| over all layers, per leading index."""
    num = sum(np.sum((np.asarray(x) - np.asarray(y)) ** 2, axis=(-2, -1)) for x, y in zip(a, b))
    den = sum(np.sum(np.asarray(y) ** 2, axis=(-2, -1)) for y in b)
    return np.sqrt(num / den)


def drift_curve(weights) -> np.ndarray:
    """Per run and save time, max over neurons of |I(t) - I(0)| divided by max over t of
    sum_j ||W_j(t)||_F^2 (so its max over t is ``analysis.balance_drift(kind='neuron')``)."""
    inv = np.concatenate([np.asarray(b) for b in analysis.neuron_balance(weights)], axis=-1)
    change = np.max(np.abs(inv - inv[:, :1]), axis=-1)  # (runs, T)
    scale = sum(np.sum(np.asarray(w) ** 2, axis=(-2, -1)) for w in weights)  # (runs, T)
    return change / np.nanmax(scale, axis=1, keepdims=True)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out.final_loss)
    return out, time.perf_counter() - t


def _figure(path, ts_gd, dist, dist2, ts_gf, drift_gf, drift_gd, drift_gd2, lr, lr2, ok,
            loss_gf, loss_gd):
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.5))
    t = ts_gd[1:]
    ax = axes[0]
    for d, lab, c in ((dist, f"lr {lr:g}", "C0"), (dist2, f"lr {lr2:g}", "C1")):
        for run in np.nonzero(ok)[0]:
            ax.plot(t, d[run, 1:], color=c, lw=0.4, alpha=0.35)
        ax.plot(t, np.median(d[ok, 1:], 0), color=c, lw=2, label=f"GD {lab}: median")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t (mean convention)", fontsize=8)
    ax.set_title("||theta_GD - theta_GF|| / ||theta_GF||", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    floor = 1e-18
    ax.plot(ts_gf[1:], np.maximum(np.nanmax(drift_gf[ok, 1:], 0), floor), color="k",
            label="GF (max over seeds)")
    for d, lab, c in ((drift_gd, f"lr {lr:g}", "C0"), (drift_gd2, f"lr {lr2:g}", "C1")):
        ax.plot(t, np.maximum(np.max(d[ok, 1:], 0), floor), color=c, label=f"GD {lab} (max)")
        ax.plot(t, np.maximum(np.median(d[ok, 1:], 0), floor), color=c, ls=":",
                label=f"GD {lab} (median)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t (mean convention)", fontsize=8)
    ax.set_title("balancedness drift (neuron invariants)", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[2]
    for run in np.nonzero(ok)[0]:
        ax.plot(ts_gf[1:], loss_gf[run, 1:], color="k", lw=0.6)
        ax.plot(t, loss_gd[run, 1:], color="C0", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t (mean convention)", fontsize=8)
    ax.set_title(f"loss: GF (solid) and GD lr {lr:g} (dashed)", fontsize=9)
    fig.suptitle("GF vs GD on experiment A's runs (size-2 dataset, width 2, disk init 1e-4)",
                 fontsize=10)
    save_figure(fig, path)


@register_experiment("gf_vs_gd")
def run(profile: str, out_dir: str, progress=None) -> Result:
    cfg = SETTINGS[profile]
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    data = gfsim.data.paper_pair()
    net = gfsim.MLP((2, 2, 2), key=jax.random.key(NET_KEY), init="disk", scale=1e-4,
                    runs=cfg["seeds"])
    lr, t_gd, t1 = cfg["lr"], cfg["t_gd"], cfg["t1"]
    lr2 = 2 * lr
    steps = int(round(t_gd / lr))
    # Even save steps, so the run at lr2 saves at the same times with save_steps / 2.
    save_steps = 2 * gfsim.descent.log_steps(steps // 2, cfg["num_saves"])
    ts_gd = lr * save_steps.astype(float)
    extra = np.geomspace(t_gd, t1, cfg["extra_saves"] + 1)[1:] if t1 > t_gd else np.zeros(0)
    ts_gf = np.concatenate([ts_gd, extra])
    m = len(ts_gd)

    # GF: the first call compiles; the second is timed (steady state); then the same program to
    # t_gd only, the simulated time of the GD run (scaled save times: same shapes, no compile).
    gf_kw = dict(reduction="mean", rtol=cfg["rtol"], max_steps=cfg["max_steps"])
    gf, gf_first = _timed(lambda: gfsim.simulate(net, data, t1, ts=ts_gf, **gf_kw))
    gf, gf_t1_time = _timed(lambda: gfsim.simulate(net, data, t1, ts=ts_gf, **gf_kw))
    _, gf_tgd_time = _timed(lambda: gfsim.simulate(net, data, t_gd, ts=ts_gf * (t_gd / t1),
                                                   **gf_kw))
    if progress is not None:
        progress("gf_vs_gd: gradient flow")
    gd, gd_first = _timed(lambda: gfsim.gd(net, data, lr, steps, save_steps=save_steps))
    gd, gd_time = _timed(lambda: gfsim.gd(net, data, lr, steps, save_steps=save_steps))
    gd2 = gfsim.gd(net, data, lr2, steps // 2, save_steps=save_steps // 2)
    if progress is not None:
        progress("gf_vs_gd: gradient descent")

    gf_at = [np.asarray(w)[:, :m] for w in gf.weights]
    dist = param_distance(gd.weights, gf_at)  # (runs, m)
    dist2 = param_distance(gd2.weights, gf_at)
    status = np.asarray(gf.status)
    stalled = int(np.sum(status == gfsim.Status.MAX_STEPS))
    ok = status == gfsim.Status.REACHED_T1
    drift_gf = drift_curve(gf.weights)  # over 0..t1
    drift_gf_tgd = np.asarray(analysis.balance_drift(gf_at))  # over 0..t_gd
    drift_gd = drift_curve(gd.weights)
    drift_gd2 = drift_curve(gd2.weights)
    bd_gf = np.asarray(analysis.balance_drift(gf.weights))
    bd_gd = np.asarray(analysis.balance_drift(gd.weights))
    bd_gd2 = np.asarray(analysis.balance_drift(gd2.weights))
    # Runs with zero gradient from the start (no neuron active on any point: loss plateau 0.5)
    # never move; GF and GD agree exactly there, and ratios are undefined.
    moving = np.max(dist, axis=1) > 0
    use = ok & moving
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_dist = np.max(dist2, axis=1) / np.max(dist, axis=1)
        ratio_drift = bd_gd2 / bd_gd
    gd_conv = np.asarray(gd.final_loss) < 1e-4
    speedup = gd_time / gf_tgd_time

    fig = "gf_vs_gd.png"
    _figure(os.path.join(out_dir, fig), ts_gd, dist, dist2, ts_gf, drift_gf, drift_gd, drift_gd2,
            lr, lr2, ok, np.asarray(gf.loss), np.asarray(gd.loss))
    runs = Runs()
    fixed = dict(dataset="paper_pair", depth=2, width=2, init="disk", init_scale=1e-4,
                 loss="square", reduction="mean", seed=np.arange(cfg["seeds"]))
    nan = np.full(cfg["seeds"], np.nan)
    runs.add(gf, coords=dict(fixed, flow="gf", lr=np.nan, t1=t1, rtol=cfg["rtol"],
                             max_steps=cfg["max_steps"], steps=np.nan),
             extra={"moving": moving, "drift": (("run", "time"), drift_gf), "balance_drift": bd_gf,
                    "balance_drift_to_t_gd": drift_gf_tgd, "ratio_distance": nan,
                    "ratio_drift": nan}, save_weights=True)
    for tr, rate, n_steps, d, drift, bd, rd, rdr in (
            (gd, lr, steps, dist, drift_gd, bd_gd, nan, nan),
            (gd2, lr2, steps // 2, dist2, drift_gd2, bd_gd2, ratio_dist, ratio_drift)):
        runs.add(tr, coords=dict(fixed, flow="gd", lr=rate, t1=t_gd, rtol=np.nan,
                                 max_steps=n_steps, steps=n_steps),
                 extra={"moving": moving, "drift": (("run", "time"), drift),
                        "balance_drift": bd,
                        "balance_drift_to_t_gd": bd, "ratio_distance": rd, "ratio_drift": rdr,
                        "distance_to_gf": (("run", "time"), d),
                        "step": (("run", "time"), np.tile(
                            np.round(np.asarray(tr.ts) / rate).astype(np.int64),
                            (cfg["seeds"], 1)))},
                 save_weights=True)
    seconds = dict(seconds_gf_t1=gf_t1_time, seconds_gf_tgd=gf_tgd_time, seconds_gd=gd_time,
                   seconds_gf_first=gf_first, seconds_gd_first=gd_first)
    for k, v in seconds.items():
        runs.array(k, v)

    setting = (f"experiment A's first {cfg['seeds']} seeds: size-2 dataset, widths (2,2,2) ReLU, "
               f"disk init 1e-4, square loss mean reduction; GF tsit5 rtol {cfg['rtol']:g} to "
               f"t1 = {t1:g}; GD lr {lr:g} for {steps} steps (t = {t_gd:g})"
               + (f", not t1 = {t1:g}, to fit the time budget" if t_gd < t1 else "")
               + f", and lr {lr2:g} for {steps // 2} steps")
    stall_txt = (f"; GF runs stalled (status max_steps): {stalled} of {cfg['seeds']}, excluded "
                 "from the statistics" if stalled else "; no GF run stalled")
    static_txt = (f"; {int(np.sum(ok & ~moving))} runs never move (no neuron active on any "
                  "point: zero gradient, GD = GF exactly), excluded from the ratios")
    d_max_t = np.max(dist[ok], axis=1) if ok.any() else np.array([np.nan])
    r_dist = ratio_dist[use]
    claims = [Claim(
        claim=f"GD at lr {lr:g} (the authors' stand-in) tracks GF to O(lr)",
        setting=setting,
        measured=f"relative weight distance ||theta_GD - theta_GF|| / ||theta_GF|| over t <= "
        f"{t_gd:g}: median over seeds of its max over time {np.median(d_max_t):.1e}, max "
        f"{np.max(d_max_t):.1e} (= {np.max(d_max_t) / lr:.1f} lr); at t = {t_gd:g}: median "
        f"{np.median(dist[ok, -1]):.1e}, max {np.max(dist[ok, -1]):.1e}; doubling lr multiplies "
        f"the max-over-time distance by {np.median(r_dist):.3f} (median; range "
        f"{np.min(r_dist):.3f} to {np.max(r_dist):.3f}){static_txt}{stall_txt}",
        verdict="agrees" if np.max(d_max_t) < 100 * lr and abs(np.median(r_dist) - 2) < 0.2
        else "disagrees",
    )]
    r_drift = ratio_drift[use & (bd_gd > 0)]
    cg = ok & gd_conv
    plateau = ok & moving & ~gd_conv
    gd_conv_drift = np.median(bd_gd[cg]) if cg.any() else np.nan
    gf_max = float(np.max(bd_gf[ok]))
    claims.append(Claim(
        claim="GF conserves the balancedness invariants (per neuron ||out||^2 - ||in||^2), GD "
        "does not (drift O(lr))",
        setting=setting,
        measured=f"relative drift (analysis.balance_drift, neuron): GF max over seeds "
        f"{gf_max:.1e} over t <= {t1:g} ({np.max(drift_gf_tgd[ok]):.1e} over t <= {t_gd:g}); "
        f"GD lr {lr:g} over t <= {t_gd:g}: median {gd_conv_drift:.1e} (max "
        f"{(np.max(bd_gd[cg]) if cg.any() else np.nan):.1e}) over the {int(cg.sum())} "
        f"runs at loss < 1e-4 by t = {t_gd:g}, but only "
        f"{(np.median(bd_gd[plateau]) if plateau.any() else np.nan):.1e} over the "
        f"{int(plateau.sum())} moving runs still at loss >= 1e-4 (plateaus or not yet "
        f"fitted); doubling lr multiplies GD's drift by {np.median(r_drift):.3f} (median; range "
        f"{np.min(r_drift):.3f} to "
        f"{np.max(r_drift):.3f}){static_txt}{stall_txt}",
        verdict="agrees" if gf_max < 1e-10 and gd_conv_drift > 100 * gf_max
        and abs(np.median(r_drift) - 2) < 0.2 else "disagrees",
    ))
    claims.append(Claim(
        claim="GF is faster than the GD loop at the same simulated time",
        setting=setting + "; steady state (second call, after compiling), "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
        measured=f"to t = {t_gd:g}: GD {gd_time:.3f} s ({steps} steps x {cfg['seeds']} seeds), GF "
        f"{gf_tgd_time:.4f} s (max {int(np.max(np.asarray(gf.num_steps)))} solver steps to "
        f"t1 = {t1:g}): GF {speedup:.0f}x faster; GF to t1 = {t1:g} {gf_t1_time:.4f} s. First "
        f"calls (with compiling): GF {gf_first:.1f} s, GD {gd_first:.1f} s",
        verdict="agrees" if speedup > 1 else "disagrees",
    ))
    notes = [
        "GD's error against the flow is first order: the distance and the balancedness drift "
        "both scale linearly with lr (the doubling ratios above). The distance grows during the "
        "escape from the small init, where GD's per-step growth factor 1 + lr*lambda falls "
        "behind exp(lr*lambda). Runs that reach the same limit end close together again "
        "(the distance at the last time is smaller than its maximum).",
        "GD's balancedness drift is O(lr) but its constant is small here: the per-step change "
        "of a neuron's invariant is lr^2 (||g_out||^2 - ||g_in||^2) (the O(lr) term vanishes by "
        "homogeneity), and from the nearly balanced disk init (imbalance ~ 1e-8) the two "
        "gradient norms stay close while each neuron is active on one point only (it aligns "
        "with that point and its outgoing weights with the residual). The drift is generated "
        "where a neuron is active on both points and turns, so it is ~1e-7 in most runs that "
        "fit the data, but ~1e-12 in fitted runs whose neurons start one on each side (the "
        "'split' starts of experiment A) and in runs left on a loss plateau.",
        f"GF wall-clock is for the whole batch of {cfg['seeds']} seeds solved in lockstep; GD's "
        "loop is a jitted fori_loop inside a scan over save intervals (gfsim.gd).",
    ]
    if t_gd < t1:
        notes.append(f"Profile {profile!r}: GD was run to t = {t_gd:g} ({steps} steps), not to "
                     f"the authors' t1 = {t1:g} ({int(round(t1 / lr))} steps), to fit the time "
                     "budget; the 'full' profile runs GD to t1.")
    if stalled:
        notes.append(f"{stalled} GF runs exhausted max_steps={cfg['max_steps']} (sliding along a "
                     "ReLU kink); they are counted above and excluded from the statistics.")
    return Result(
        name="gf_vs_gd",
        title="GF vs the authors' GD stand-in (lr 1e-4)",
        claims=claims,
        figures=[fig],
        data_file=store_name("gf_vs_gd"),
        settings=dict(cfg, widths=[2, 2, 2], init="disk", scale=1e-4, loss="square",
                      reduction="mean", solver="tsit5", gd_steps=steps, lr2=lr2,
                      net_key=NET_KEY),
        seconds=time.perf_counter() - start,
        notes=notes,
        data=runs.dataset({"net_key": NET_KEY, "flows": "flow='gf': gradient flow to t1; "
                           "flow='gd': gradient descent at lr for `steps` steps (t = lr x "
                           "steps), distance_to_gf against the GF run of the same seed"}),
    )
