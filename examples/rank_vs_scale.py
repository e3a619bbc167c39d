"""The derivative of the final stable rank of W_1 with respect to the init scale, across scales.

    python examples/rank_vs_scale.py [--out rank_vs_scale.png]

Two settings: the paper's depth-2 one (the size-2 dataset, width 2, the disk init of radius s,
t1 = 300, mean loss) and a depth-4 ReLU net on teacher-student data (width 8, Gaussian init of
scale s, exponential loss, t1 = 200). For each, 8 seeds at each of 12 scales, all in one batched
forward-mode pass (the derivative of every run with respect to its own scale), checked against
central differences at one scale. Top: the final stable rank; bottom: its derivative.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import gfsim  # noqa: E402
from gfsim import analysis  # noqa: E402

SEEDS, SCALES = 8, np.logspace(-3, -0.5, 12)


def settings():
    yield ("depth 2, paper pair, disk init", gfsim.MLP((2, 2, 2), key=jax.random.key(0),
                                                         init="disk", scale=1.0, runs=SEEDS),
           gfsim.data.paper_pair(), 300.0, dict(reduction="mean"))
    data = gfsim.data.teacher_student(jax.random.key(1), 16, 3)
    yield ("depth 4, teacher-student, exponential loss",
           gfsim.MLP((3, 8, 8, 8, 1), key=jax.random.key(2), init="gaussian", scale=1.0,
                     runs=SEEDS), data, 200.0, dict(loss="exponential", reduction="mean"))


def derivative_across_scales(name, base, data, t1, kw):
    """The final ranks and their derivatives (scales, seeds), in one forward-mode pass."""
    # every (scale, seed) pair is one run of one batch
    nets = jax.vmap(lambda s: gfsim.scaled(base, s))(jnp.asarray(SCALES))
    nets = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), nets)
    scales = jnp.repeat(jnp.asarray(SCALES), SEEDS)

    def rank(s):
        batch = jax.vmap(gfsim.scaled)(nets, s / scales)  # each run's own scale
        tr = gfsim.simulate(batch, data, t1, rtol=1e-8, num_saves=2, adjoint="forward", **kw)
        return analysis.stable_rank(tr.final_weights[0])

    r, dr = jax.jvp(rank, (scales,), (jnp.ones_like(scales),))
    i = (len(SCALES) // 2) * SEEDS  # seed 0 at the middle scale
    h = 1e-4 * float(scales[i])
    e = jnp.zeros_like(scales).at[i].set(h)
    fd = (rank(scales + e)[i] - rank(scales - e)[i]) / (2 * h)
    print(f"{name}: d rank / d scale at s = {float(scales[i]):.3g}, seed 0: forward mode "
          f"{float(dr[i]):.6g}, central differences {float(fd):.6g}")
    shape = (len(SCALES), SEEDS)
    return np.asarray(r).reshape(shape), np.asarray(dr).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="rank_vs_scale.png")
    out = ap.parse_args().out
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for col, (name, base, data, t1, kw) in enumerate(settings()):
        r, dr = derivative_across_scales(name, base, data, t1, kw)
        for k in range(SEEDS):
            axes[0, col].semilogx(SCALES, r[:, k], ".-", alpha=0.6)
            axes[1, col].semilogx(SCALES, dr[:, k], ".-", alpha=0.6)
        axes[0, col].set_title(name, fontsize=10)
        axes[0, col].set_ylabel("final stable rank of W1")
        axes[1, col].set_ylabel("d rank / d scale")
        axes[1, col].set_xlabel("init scale")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
