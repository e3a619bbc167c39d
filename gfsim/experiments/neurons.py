"""Experiment A, the picture: the neurons of W_1 moving on the plane for the paper's size-2 dataset.

Each row of W_1 is a point of the plane. Norms grow from the init scale 1e-4 to O(1), so a row is
drawn at its direction, at a radius that grows with log10 of its norm (rings mark the norms). The
data points x1, x2 are arrows; the regions where a neuron is active on x1 only (w.x1 > 0 >= w.x2)
and on x2 only are shaded, bounded by the lines perpendicular to x1 and x2 through the origin.
"""

from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

import gfsim

from . import Claim, Result, Runs, pyplot, register_experiment, store_name

SETTINGS = {
    "quick": dict(widths=(2, 8), seeds=8, t1=300.0, num_saves=32, decades=2.5, rtol=1e-8,
                  max_steps=5_000, frames=6),
    "full": dict(widths=(2, 8), seeds=64, t1=300.0, num_saves=80, decades=2.5, rtol=1e-8,
                 max_steps=50_000, frames=6),
    "tiny": dict(widths=(2, 8), seeds=8, t1=300.0, num_saves=12, decades=2.5, rtol=1e-8,
                 max_steps=3_000, frames=4),  # tests
}
SCALE = 1e-4
# Display radius: log10(norm) mapped linearly from [LOG_LO, LOG_HI] to [R_LO, 1].
LOG_LO, LOG_HI, R_LO = -4.5, 0.5, 0.12
ALIGN = 0.99  # final cosine required for "aligns with x_i"


def regions(w: np.ndarray, X: np.ndarray):
    """w: (..., h, 2) rows of W_1. Returns (only_x1, only_x2) boolean arrays (..., h).
    NaN rows (unreached save slots) give False."""
    pre = np.einsum("...hd,nd->...hn", w, X)
    only_x1 = (pre[..., 0] > 0) & (pre[..., 1] <= 0)
    only_x2 = (pre[..., 1] > 0) & (pre[..., 0] <= 0)
    return only_x1, only_x2


def display_points(w: np.ndarray) -> np.ndarray:
    """Rows (..., 2) -> plotted points: direction times a radius that grows with log10 ||w||."""
    norm = np.linalg.norm(w, axis=-1, keepdims=True)
    r = R_LO + (1 - R_LO) * (np.log10(np.maximum(norm, 1e-300)) - LOG_LO) / (LOG_HI - LOG_LO)
    return w / np.maximum(norm, 1e-300) * np.clip(r, 0.0, 1.05)


def _radius(norm: float) -> float:
    return R_LO + (1 - R_LO) * (math.log10(norm) - LOG_LO) / (LOG_HI - LOG_LO)


def _draw_frame(ax, panels, X, t, tidx):
    """panels: list of (label, w_traj (T, h, 2), loss (T,)). Draw all panels at save index tidx."""
    import matplotlib.patches as mpatches

    for a, (label, wt, loss) in zip(ax, panels):
        a.clear()
        a.set_aspect("equal")
        a.set_xlim(-1.15, 1.15)
        a.set_ylim(-1.15, 1.15)
        a.set_xticks([])
        a.set_yticks([])
        # Shade the one-sided regions: angles where w.x1 > 0 >= w.x2 (and vice versa).
        phi = np.linspace(0, 2 * np.pi, 721)
        u = np.stack([np.cos(phi), np.sin(phi)], 1)
        p1, p2 = u @ X[0], u @ X[1]
        for mask, color, name in (((p1 > 0) & (p2 <= 0), "C0", "x1 only"),
                                  ((p2 > 0) & (p1 <= 0), "C3", "x2 only")):
            ph = phi[mask]
            # The mask is one arc (possibly wrapping around 0): sort it into a contiguous wedge.
            if ph.size:
                gaps = np.diff(ph)
                if gaps.size and gaps.max() > 0.1:
                    k = int(np.argmax(gaps)) + 1
                    ph = np.concatenate([ph[k:], ph[:k] + 2 * np.pi])
                a.add_patch(mpatches.Wedge((0, 0), 1.1, np.degrees(ph[0]), np.degrees(ph[-1]),
                                           color=color, alpha=0.12, label=name))
        # Boundary lines: perpendicular to x1 and x2 through the origin.
        for x, color in ((X[0], "C0"), (X[1], "C3")):
            perp = np.array([-x[1], x[0]]) * 1.15
            a.plot([-perp[0], perp[0]], [-perp[1], perp[1]], color=color, lw=0.8, ls="--")
        for nrm in (1e-4, 1e-2, 1.0):
            r = _radius(nrm)
            a.add_patch(mpatches.Circle((0, 0), r, fill=False, lw=0.4, color="0.6"))
            a.text(r * 0.71, -r * 0.71, f"{nrm:g}", fontsize=6, color="0.5")
        for x, color, name in ((X[0], "C0", "x1"), (X[1], "C3", "x2")):
            a.annotate("", xy=x * 1.05, xytext=(0, 0),
                       arrowprops=dict(arrowstyle="->", color=color, lw=1.5))
            a.text(*(x * 1.1), name, color=color, fontsize=8)
        pts = display_points(wt[: tidx + 1])  # (tidx+1, h, 2)
        for j in range(wt.shape[1]):
            a.plot(pts[:, j, 0], pts[:, j, 1], color="0.3", lw=0.6, alpha=0.6)
        cur = pts[-1]
        s1, s2 = regions(wt[0], X)  # colour each neuron by its start region
        colors = np.where(s1, "C0", np.where(s2, "C3", "k"))
        a.scatter(cur[:, 0], cur[:, 1], s=22, c=list(colors), edgecolors="k", zorder=5)
        a.set_title(f"{label}\nt = {t[tidx]:.3g}, loss = {loss[tidx]:.3g}", fontsize=8)
    ax[0].legend(fontsize=6, loc="lower left")


@register_experiment("neurons")
def run(profile: str, out_dir: str, progress=None) -> Result:
    plt = pyplot()
    from matplotlib import animation

    cfg = SETTINGS[profile]
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    data = gfsim.data.paper_pair()
    X = np.asarray(data.X)
    ts = gfsim.log_times(cfg["t1"], cfg["num_saves"], cfg["decades"])
    t = np.asarray(ts)
    key = jax.random.key(1)
    runs, rows, panels = Runs(), [], []
    n_start = n_stay = n_align = 0
    worst_cos = np.inf
    statuses = {}
    for width in cfg["widths"]:
        key, sub = jax.random.split(key)
        net = gfsim.MLP((2, width, 2), key=sub, init="disk", scale=SCALE, runs=cfg["seeds"])
        tr = gfsim.simulate(net, data, cfg["t1"], ts=ts, reduction="mean", rtol=cfg["rtol"],
                            max_steps=cfg["max_steps"])
        w1 = np.asarray(tr.weights[0])  # (runs, T, h, 2)
        w1_final = np.asarray(tr.final_weights[0])  # (runs, h, 2)
        loss = np.asarray(tr.loss)  # (runs, T)
        status = np.asarray(tr.status)
        statuses[width] = status
        reached = np.all(np.isfinite(w1), axis=(-2, -1))  # (runs, T): save slot was reached
        o1, o2 = regions(w1, X)  # (runs, T, h)
        start1, start2 = o1[:, 0], o2[:, 0]  # (runs, h)
        # "Stays": in its start region at every reached save time, and at the final state.
        f1, f2 = regions(w1_final, X)
        stay1 = np.all(o1 | ~reached[..., None], axis=1) & f1
        stay2 = np.all(o2 | ~reached[..., None], axis=1) & f2
        unit = w1_final / np.linalg.norm(w1_final, axis=-1, keepdims=True)
        cos1, cos2 = unit @ X[0], unit @ X[1]  # (runs, h)
        s1, s2 = start1, start2
        n_start += int(s1.sum() + s2.sum())
        n_stay += int(stay1[s1].sum() + stay2[s2].sum())
        n_align += int((cos1[s1] > ALIGN).sum() + (cos2[s2] > ALIGN).sum())
        cs = np.concatenate([cos1[s1], cos2[s2]])
        if cs.size:
            worst_cos = min(worst_cos, float(cs.min()))
        rows.append(
            f"width {width}: {int(s1.sum())} x1-only and {int(s2.sum())} x2-only starts over "
            f"{cfg['seeds']} seeds; stayed {int(stay1[s1].sum())}/{int(s1.sum())} and "
            f"{int(stay2[s2].sum())}/{int(s2.sum())}; min final cos "
            f"{cs.min() if cs.size else float('nan'):.5f}; runs stalled (max_steps) "
            f"{int(np.sum(status == gfsim.Status.MAX_STEPS))}"
        )
        # Display run: the first seed with a neuron in each one-sided region (else seed 0).
        both = np.flatnonzero(s1.any(1) & s2.any(1))
        show = int(both[0]) if both.size else 0
        panels.append((f"width {width}, seed {show}", w1[show], loss[show]))
        runs.add(tr, coords=dict(
            dataset="paper_pair", depth=2, width=width, init="disk", init_scale=SCALE,
            seed=np.arange(cfg["seeds"]), t1=cfg["t1"], rtol=cfg["rtol"],
            max_steps=cfg["max_steps"], num_saves=cfg["num_saves"], decades=cfg["decades"],
            loss="square", reduction="mean", solver="tsit5"),
            extra={"start_only_x1": (("run", "neuron"), s1),
                   "start_only_x2": (("run", "neuron"), s2),
                   "stay_only_x1": (("run", "neuron"), stay1),
                   "stay_only_x2": (("run", "neuron"), stay2),
                   "final_cos_x1": (("run", "neuron"), cos1),
                   "final_cos_x2": (("run", "neuron"), cos2),
                   "displayed": np.arange(cfg["seeds"]) == show},
            save_weights=True, final_weights=True)
        if progress is not None:
            progress(f"neurons: width {width}")

    # Frames at evenly spread save indices (the save times are log-spaced, so log-spaced times).
    T = len(t)
    frame_idx = sorted({int(i) for i in np.round(np.linspace(0, T - 1, cfg["frames"]))})
    figures = []
    fig, ax = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0), squeeze=False)
    ax = ax[0]
    for k, i in enumerate(frame_idx):
        _draw_frame(ax, panels, X, t, i)
        fig.suptitle("Rows of W1 (radius ~ log10 norm), paper's size-2 dataset", fontsize=9)
        fig.tight_layout()
        name = f"neurons_frame{k}.png"
        fig.savefig(os.path.join(out_dir, name), dpi=90)
        figures.append(name)

    def update(i):
        _draw_frame(ax, panels, X, t, i)
        return list(ax)

    anim = animation.FuncAnimation(fig, update, frames=T, blit=False)
    gif = "neurons.gif"
    anim.save(os.path.join(out_dir, gif), writer=animation.PillowWriter(fps=6), dpi=70)
    plt.close(fig)
    figures.append(gif)

    runs.array("X", X, ("point", "in"))
    runs.array("frame_idx", np.asarray(frame_idx), ("frame",))

    ok = n_start > 0 and n_stay == n_start and n_align == n_start
    claims = [Claim(
        claim="A neuron that starts active on x1 only stays so (at every saved time) and aligns "
        "with x1 (final cos > 0.99); likewise for x2",
        setting=f"paper's size-2 dataset, depth 2, widths {list(cfg['widths'])}, disk init r=1e-4,"
        f" {cfg['seeds']} seeds per width, t1={cfg['t1']}, mean loss, {T} log-spaced saves",
        measured=f"{n_start} one-sided starting neurons: {n_stay} stayed, {n_align} aligned "
        f"(min cos {worst_cos:.5f}). " + "; ".join(rows),
        verdict="agrees" if ok else ("inconclusive" if n_start == 0 else "disagrees"),
    )]
    notes = [
        "Display: each row w of W1 is drawn at direction w/||w|| and radius linear in "
        f"log10||w|| (from {10 ** LOG_LO:g} at radius {R_LO} to {10 ** LOG_HI:.3g} at 1); rings "
        "mark norms 1e-4, 1e-2, 1. Shaded wedges: active on x1 only (blue), x2 only (red).",
        f"Frames {figures[:-1]} at save indices {frame_idx}; the GIF holds all {T} saved times.",
    ]
    stalled = {w: int(np.sum(s == gfsim.Status.MAX_STEPS)) for w, s in statuses.items()}
    if any(stalled.values()):
        notes.append("Runs that exhausted the step budget (status max_steps, flow sliding along a "
                     f"ReLU kink) are kept; their unreached save slots are NaN: {stalled}.")
    return Result(
        name="neurons",
        title="A. Neurons of W1 on the plane (size-2 dataset)",
        claims=claims,
        figures=figures,
        data_file=store_name("neurons"),
        data=runs.dataset({"seeds_key": "jax.random.key(1), split once per width",
                           "displayed": "the run drawn in the frames and the GIF, per width"}),
        settings=dict(cfg, widths=list(cfg["widths"]), loss="square", reduction="mean",
                      solver="tsit5", init="disk", scale=SCALE, seeds_key="jax.random.key(1)"),
        seconds=time.perf_counter() - start,
        notes=notes,
    )
