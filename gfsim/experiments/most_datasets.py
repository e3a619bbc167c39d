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

from . import Claim, Result, Runs, pyplot, register_experiment, save_figure, store_name

SETTINGS = {
    "quick": dict(dims=(2, 10), widths=(2, 16), datasets=40, seeds=4, t1=300.0, rtol=1e-8,
                  max_steps=3_000),
    "full": dict(dims=(2, 5, 10, 50), widths=(2, 16), datasets=288, seeds=4, t1=300.0,
                 rtol=1e-8, max_steps=50_000),
    "tiny": dict(dims=(2, 6), widths=(2,), datasets=12, seeds=2, t1=300.0, rtol=1e-8,
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


def _one(cfg, dim, width, kd, kn, runs: Runs) -> dict:
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
    # The claim is about probability over the init: a dataset counts when GF ends far from
    # rank 1 in at least one of its seeds (an estimate of "with non-negligible probability").
    some_far_d = np.any(conv_d & (sr_d >= FAR), axis=1)
    per_run = lambda a: np.repeat(a, S)  # noqa: E731 - a dataset's value on each of its runs
    runs.add(tr, coords=dict(
        dataset="random_pairs", dim=dim, width=width, depth=2, init="disk", init_scale=SCALE,
        t1=cfg["t1"], rtol=cfg["rtol"], max_steps=cfg["max_steps"], loss="square",
        reduction="mean", solver="tsit5", method="auto", pair=per_run(np.arange(D)),
        seed=np.tile(np.arange(S), D)),
        extra={"angle": angle, "stable_rank_W1": sr, "converged": conv, "stalled": stalled,
               "split_start": split, "dataset_has_converged": per_run(has_conv),
               "dataset_far": per_run(far_d), "dataset_some_far": per_run(some_far_d),
               "X": (("run", "point", "in"), X)},
        initial_weights=g_nets.weights, final_weights=True)
    return dict(
        angle=angle, loss=loss, status=status, stable_rank=sr, converged=conv, stalled=stalled,
        split_start=split, t_final=np.asarray(tr.t_final), steps=np.asarray(tr.num_steps),
        slides=np.asarray(tr.num_slides) if tr.num_slides is not None else np.zeros_like(loss),
        dataset_angle=angle.reshape(D, S)[:, 0], dataset_has_converged=has_conv,
        dataset_far=far_d, dataset_some_far=some_far_d, X=np.asarray(data.X), W1_0=w1_0,
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
    runs = Runs()
    for d in cfg["dims"]:
        key, kd = jax.random.split(key)  # the same datasets for every width
        for w in cfg["widths"]:
            key, kn = jax.random.split(key)
            results[(d, w)] = _one(cfg, d, w, kd, kn, runs)
            if progress is not None:
                progress(f"most_datasets: d={d} width {w}")

    fig = "most_datasets_sr_vs_angle.png"
    _figure(os.path.join(out_dir, fig), results, cfg)

    claims, notes = [], []
    n_runs = cfg["datasets"] * cfg["seeds"]
    top, low = max(cfg["dims"]), min(cfg["dims"])
    for w in cfg["widths"]:
        parts, share = [], {}
        for d in cfg["dims"]:
            r = results[(d, w)]
            c, s = r["converged"], r["stalled"]
            has = r["dataset_has_converged"]
            share[d] = float(r["dataset_some_far"][has].mean()) if has.any() else float("nan")
            all_far = float(r["dataset_far"][has].mean()) if has.any() else float("nan")
            srs = r["stable_rank"][c]
            runs_far = float(np.mean(srs >= FAR)) if srs.size else float("nan")
            window = float(np.mean(np.abs(np.cos(r["dataset_angle"])) <= 1 / 3))
            parts.append(
                f"d = {d}: {share[d]:.2f} of the {int(has.sum())} datasets with a converged run "
                f"(all seeds far: {all_far:.2f}; converged runs far: {runs_far:.2f} of "
                f"{int(c.sum())}, median sr {np.median(srs) if srs.size else float('nan'):.3f}; "
                f"not converged {int((~c).sum())} of {n_runs}: stalled (max_steps) "
                f"{int(s.sum())}, loss plateau {int((~c & ~s).sum())}; share of pairs with "
                f"|cos| <= 1/3, where 2/(1+|cos|) >= {FAR}: {window:.2f})"
            )
        n_top = int(results[(top, w)]["dataset_has_converged"].sum())
        if n_top < MIN_DATASETS:
            verdict = "inconclusive"
        else:
            verdict = ("agrees" if share[top] > 0.5 and share[top] >= share[low]
                       else "disagrees")
        claims.append(Claim(
            claim="Claim 2 (most datasets): for most random size-2 datasets (random pairs in "
            "high dimension, nearly orthogonal) GF from small init reaches zero loss at a W_1 "
            f"far from rank 1 (stable rank >= {FAR}) with non-negligible probability over the "
            "init; verdict on the highest dimension (share > 0.5, and not below the lowest "
            "dimension's)",
            setting=f"width {w}, dims {list(cfg['dims'])}, {cfg['datasets']} random pairs on "
            f"the sphere per dim x {cfg['seeds']} seeds, disk init r=1e-4, t1={cfg['t1']}, mean "
            f"loss, rtol {cfg['rtol']:g}, max_steps {cfg['max_steps']}; a dataset counts when at "
            "least one of its converged (loss < 1e-4) runs ends far from rank 1",
            measured="; ".join(parts),
            verdict=verdict,
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
    for (d, w), r in results.items():
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
    slid = {f"d={d} w={w}": (int(np.sum(r["slides"] > 0)),
                             int(np.sum((r["slides"] > 0) & r["converged"])))
            for (d, w), r in results.items()}
    notes.append(
        "Many runs slide along a ReLU kink: a neuron active on x1 only moves along x1, and when "
        "cos(x1, x2) > 0 that drives it onto the boundary w.x2 = 0, where the exact (Filippov) "
        "flow slides. The event-driven ReLU solver (method 'auto' = 'events' for ReLU nets) "
        "follows them; runs with at least one sliding episode (of which converged): "
        + ", ".join(f"{k}: {a} ({b})" for k, (a, b) in slid.items())
        + ". A run that still exhausted max_steps would be counted as 'stalled' in its row, "
        "drawn as a red cross at its last stable rank and excluded from the converged statistics. "
        "Runs on a loss plateau (0.25 or 0.5: a dead or shared neuron) reached t1 and are not "
        "converged either."
    )
    notes.append(
        "How the claim is read: the theorem is about probability over the init (GF ends far "
        "from rank 1 with a constant probability, not always), and 'most' datasets refers to "
        "random pairs in high dimension, which are nearly orthogonal. A converged run with rows "
        "along x1 and x2 has stable rank 2/(1+|cos|), >= 1.5 only for angles in [70.5, 109.5] "
        "degrees: in d = 2 the angle of a random pair is uniform on [0, 180] and only a minority "
        "of datasets can end far from rank 1 (the lowest-dimension figures in each row, for "
        "comparison); in d = 10 almost all pairs are in that window. The row also gives the "
        "stricter share of datasets where ALL converged seeds end far (a finite-seed estimate "
        "of 'with probability 1', which the paper does not claim)."
    )
    return Result(
        name="most_datasets",
        title="Most datasets of size 2: random pairs on the sphere",
        claims=claims,
        figures=[fig],
        data_file=store_name("most_datasets"),
        data=runs.dataset({"seeds_key": "jax.random.key(2): split once per dim (the pairs, "
                           "shared by every width) and once per (dim, width) (the nets)",
                           "pair": "run = pair * seeds + seed within a (dim, width)"}),
        settings=dict(cfg, dims=list(cfg["dims"]), widths=list(cfg["widths"]), loss="square",
                      reduction="mean", solver="tsit5", method="auto (events for ReLU)",
                      init="disk", scale=SCALE,
                      far_threshold=FAR, converged=CONVERGED, seeds_key="jax.random.key(2)"),
        seconds=time.perf_counter() - start,
        notes=notes,
    )
