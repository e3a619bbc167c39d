"""The negative result at depth 2 "for most datasets of size 2": random pairs on the sphere.

For random pairs (x1, x2) on the unit sphere in several dimensions (targets e1, e2), a depth-2 ReLU
net from small disk init is trained by gradient flow; the final stable rank of W_1 over converged
runs is set against the angle between x1 and x2.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

import gfsim
from gfsim import analysis

from . import Claim, Result, pyplot, register_experiment, save_figure

SETTINGS = {
    "quick": dict(dims=(2, 10), widths=(2, 16), datasets=48, seeds=2, t1=300.0, rtol=1e-8,
                  max_steps=3_000),
    "full": dict(dims=(2, 5, 10, 50), widths=(2, 16), datasets=288, seeds=4, t1=300.0,
                 rtol=1e-8, max_steps=50_000),
    "tiny": dict(dims=(2,), widths=(2,), datasets=24, seeds=2, t1=300.0, rtol=1e-8,
                 max_steps=1_500),  # tests
}
SCALE = 1e-4
CONVERGED = 1e-4
FAR = 1.5  # "far from rank 1": stable rank of W_1 >= 1.5
MIN_DATASETS = 10  # fewer datasets with a converged run: verdict inconclusive


def analytic_sr(angle):
    """Stable rank of W_1 = [a x1; a x2] (rows along x1 and x2, equal norms): 2/(1+|cos|)."""
    return 2.0 / (1.0 + np.abs(np.cos(angle)))


def start_regions(w1: np.ndarray, X: np.ndarray):
    """w1: (runs, h, d), X: (runs, 2, d). Per neuron: starts active on x1 only / on x2 only."""
    pre = np.einsum("rhd,rnd->rhn", w1, X)
    return (pre[..., 0] > 0) & (pre[..., 1] <= 0), (pre[..., 1] > 0) & (pre[..., 0] <= 0)


def _one(cfg, dim, width, kd, kn) -> dict:
    data = gfsim.data.random_pairs(kd, cfg["datasets"], dim)
    nets = gfsim.MLP((dim, width, 2), key=kn, init="disk", scale=SCALE, runs=cfg["seeds"])
    g_nets, g_data = gfsim.grid(nets, data)  # run = dataset * seeds + seed
    tr = gfsim.simulate(g_nets, g_data, cfg["t1"], num_saves=8, reduction="mean",
                        rtol=cfg["rtol"], max_steps=cfg["max_steps"])
    X = np.asarray(g_data.X)
    w1_0 = np.asarray(g_nets.weights[0])
    angle = np.asarray(gfsim.data.pair_angle(g_data))
    loss = np.asarray(tr.final_loss)
    status = np.asarray(tr.status)
    sr = np.asarray(analysis.stable_rank(tr.final_weights[0]))
    conv = loss < CONVERGED
    stalled = status == gfsim.Status.MAX_STEPS
    o1, o2 = start_regions(w1_0, X)
    split = ((o1[:, 0] & o2[:, 1]) | (o2[:, 0] & o1[:, 1])) if width == 2 else np.zeros_like(conv)
    # Per dataset, over its converged runs.
    D, S = cfg["datasets"], cfg["seeds"]
    conv_d = conv.reshape(D, S)
    sr_d = np.where(conv_d, sr.reshape(D, S), np.nan)
    has_conv = conv_d.any(1)
    far_d = has_conv & np.all(np.where(conv_d, sr_d >= FAR, True), axis=1)
    return dict(
        angle=angle, loss=loss, status=status, stable_rank=sr, converged=conv, stalled=stalled,
        split_start=split, t_final=np.asarray(tr.t_final), steps=np.asarray(tr.num_steps),
        dataset_angle=angle.reshape(D, S)[:, 0], dataset_has_converged=has_conv,
        dataset_far=far_d, X=np.asarray(data.X), W1_0=w1_0,
        final_W1=np.asarray(tr.final_weights[0]),
    )


def _figure(path, results, cfg):
    plt = pyplot()

    dims = cfg["dims"]
    widths = cfg["widths"]
    fig, axes = plt.subplots(len(widths), len(dims), figsize=(3.4 * len(dims), 3.0 * len(widths)),
                             squeeze=False)
    a = np.linspace(0, np.pi, 361)
    for row, w in enumerate(widths):
        for col, d in enumerate(dims):
            ax = axes[row, col]
            r = results[(d, w)]
            deg = np.degrees(r["angle"])
            ax.plot(np.degrees(a), analytic_sr(a), "k--", lw=1, label="2/(1+|cos|)")
            ax.axhline(FAR, color="0.7", lw=0.8)
            c, s = r["converged"], r["stalled"]
            plateau = ~c & ~s
            ax.scatter(deg[c], r["stable_rank"][c], s=10, color="C0",
                       label=f"converged ({int(c.sum())})")
            ax.scatter(deg[s], r["stable_rank"][s], s=14, marker="x", color="C3",
                       label=f"stalled, max_steps ({int(s.sum())})")
            ax.scatter(deg[plateau], r["stable_rank"][plateau], s=8, marker=".", color="0.6",
                       label=f"loss plateau ({int(plateau.sum())})")
            sp = r["split_start"] & c
            if sp.any():
                ax.scatter(deg[sp], r["stable_rank"][sp], s=30, facecolors="none",
                           edgecolors="k", label=f"split start, conv. ({int(sp.sum())})")
            ax.set_xlim(0, 180)
            ax.set_ylim(0.95, 2.05)
            ax.set_title(f"d = {d}, width {w}", fontsize=9)
            ax.set_xlabel("angle(x1, x2) [deg]", fontsize=8)
            ax.set_ylabel("final stable rank of W1", fontsize=8)
            ax.legend(fontsize=5.5, loc="lower left")
    fig.suptitle("Random size-2 datasets: final stable rank of W1 vs the angle of the pair",
                 fontsize=10)
    save_figure(fig, path)


@register_experiment("most_datasets")
def run(profile: str, out_dir: str, progress=None) -> Result:
    cfg = SETTINGS[profile]
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    key = jax.random.key(2)
    results = {}
    for d in cfg["dims"]:
        key, kd = jax.random.split(key)  # the same datasets for every width
        for w in cfg["widths"]:
            key, kn = jax.random.split(key)
            results[(d, w)] = _one(cfg, d, w, kd, kn)
            if progress is not None:
                progress(f"most_datasets: d={d} width {w}")

    fig = "most_datasets_sr_vs_angle.png"
    _figure(os.path.join(out_dir, fig), results, cfg)
    data_file = "most_datasets.npz"
    np.savez(os.path.join(out_dir, data_file),
             **{f"d{d}-w{w}/{f}": v for (d, w), r in results.items() for f, v in r.items()})

    claims, notes = [], []
    n_runs = cfg["datasets"] * cfg["seeds"]
    for (d, w), r in results.items():
        c, s = r["converged"], r["stalled"]
        has = r["dataset_has_converged"]
        frac = float(r["dataset_far"][has].mean()) if has.any() else float("nan")
        obtuse = r["angle"] > math.pi / 2
        srs = r["stable_rank"][c]
        a_d = r["dataset_angle"]
        window = float(np.mean(np.abs(np.cos(a_d)) <= 1 / 3))  # 2/(1+|cos|) >= 1.5
        measured = (
            f"{frac:.2f} of the {int(has.sum())} of {cfg['datasets']} datasets with a converged "
            f"run stay at sr >= {FAR} in all converged runs (converged runs: {int(c.sum())} of "
            f"{n_runs}, median sr {np.median(srs) if srs.size else float('nan'):.3f}; "
            f"obtuse {int((c & obtuse).sum())}/{int(obtuse.sum())}, acute "
            f"{int((c & ~obtuse).sum())}/{int((~obtuse).sum())}). Not converged "
            f"{int((~c).sum())}, of which stalled (max_steps) {int(s.sum())} "
            f"(acute {int((s & ~obtuse).sum())}, obtuse {int((s & obtuse).sum())}), loss plateau "
            f"{int((~c & ~s).sum())}. Share of datasets with |cos| <= 1/3 (where 2/(1+|cos|) >= "
            f"1.5): {window:.2f}"
        )
        claims.append(Claim(
            claim="Claim 2 (most datasets): GF from small init reaches zero loss at a W_1 far "
            f"from rank 1 (stable rank >= {FAR}) for most random size-2 datasets",
            setting=f"d = {d}, width {w}, {cfg['datasets']} random pairs on the sphere x "
            f"{cfg['seeds']} seeds, disk init r=1e-4, t1={cfg['t1']}, mean loss, max_steps "
            f"{cfg['max_steps']}; stable rank over converged (loss < 1e-4) runs",
            measured=measured,
            verdict="inconclusive" if has.sum() < MIN_DATASETS
            else ("agrees" if frac > 0.5 else "disagrees"),
        ))
    # Analytic check on width-2 runs of obtuse pairs with a split start.
    devs, n_split, n_split_all, n_split_stalled = [], 0, 0, 0
    for (_, w), r in results.items():
        if w != 2:
            continue
        sel_all = r["split_start"] & (r["angle"] > math.pi / 2)
        sel = sel_all & r["converged"]
        n_split_all += int(sel_all.sum())
        n_split += int(sel.sum())
        n_split_stalled += int((sel_all & r["stalled"]).sum())
        devs.extend(np.abs(r["stable_rank"][sel] - analytic_sr(r["angle"][sel])).tolist())
    all_obtuse = []
    for (_, w), r in results.items():
        sel = r["converged"] & (r["angle"] > math.pi / 2)
        if sel.any():
            dv = np.abs(r["stable_rank"][sel] - analytic_sr(r["angle"][sel]))
            all_obtuse.append(f"d={d} w={w}: {int(sel.sum())} runs, median {np.median(dv):.1e}, "
                              f"max {dv.max():.1e}")
    if all_obtuse:
        notes.append("Deviation |sr - 2/(1+|cos|)| over ALL converged runs on obtuse pairs (any "
                     "start): " + "; ".join(all_obtuse) + ".")
    if n_split_all:
        dev = max(devs) if devs else float("nan")
        claims.append(Claim(
            claim="Analytic fact: for an obtuse pair, neurons starting one in the 'x1 only' and "
            "one in the 'x2 only' region end along x1 and x2 with stable rank 2/(1+|cos(x1,x2)|)",
            setting=f"width 2, dims {list(cfg['dims'])}, obtuse random pairs, disk init r=1e-4",
            measured=f"{n_split} of {n_split_all} such runs converged ({n_split_stalled} "
            f"stalled); max |sr - 2/(1+|cos|)| = {dev:.1e}",
            verdict="agrees" if devs and dev < 1e-3 and n_split == n_split_all
            else ("inconclusive" if not devs else "disagrees"),
        ))
    conv_steps = [int(r["steps"][r["converged"]].max()) for r in results.values()
                  if r["converged"].any()]
    notes.append(
        f"t1 = {cfg['t1']:g} as in experiment A (the authors' 3e6 GD steps of lr 1e-4 under the "
        "mean convention); the escape from the 1e-4 init happens at t ~ 3-30 on the paper's pair, "
        "so converging runs finish well before t1. Most solver steps taken by a converged run: "
        f"{max(conv_steps) if conv_steps else 'n/a'} (budget {cfg['max_steps']})."
    )
    notes.append(
        "Runs whose flow slides along a ReLU kink exhaust max_steps (status max_steps) with the "
        "plain solver; they are counted as 'stalled' in each row, drawn as red crosses at their "
        "last stable rank, and excluded from the converged statistics. They occur mostly on "
        "acute pairs: a neuron active on x1 only moves along x1, and when cos(x1, x2) > 0 that "
        "drives it across the boundary w.x2 = 0, where the flow slides. Runs on a loss plateau "
        "(0.25 or 0.5: a dead or shared neuron) reached t1 and are also not converged."
    )
    notes.append(
        "For width 2, a converged run typically has rows along x1 and x2 and stable rank "
        "2/(1+|cos|), which is >= 1.5 only for angles in [70.5, 109.5] degrees. In d = 2 the angle "
        "of a random pair is uniform on [0, 180], so the share of far-from-rank-1 datasets is "
        "small; in higher d random pairs are nearly orthogonal, and most datasets are far from "
        "rank 1. 'Most datasets' therefore depends on the dimension (and on the threshold)."
    )
    return Result(
        name="most_datasets",
        title="Most datasets of size 2: random pairs on the sphere",
        claims=claims,
        figures=[fig],
        data_file=data_file,
        settings=dict(cfg, dims=list(cfg["dims"]), widths=list(cfg["widths"]), loss="square",
                      reduction="mean", solver="tsit5", init="disk", scale=SCALE,
                      far_threshold=FAR, converged=CONVERGED, seeds_key="jax.random.key(2)"),
        seconds=time.perf_counter() - start,
        notes=notes,
    )
