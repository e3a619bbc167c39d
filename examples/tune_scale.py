"""optax tunes an init scale so that gradient flow ends at a target stable rank of W_1.

    python examples/tune_scale.py [--target 1.3] [--steps 40]

A depth-3 linear net (widths 4, 6, 6, 3) on whitened regression data whose targets have
singular values (3, 2, 1): small inits end near rank one after a finite time, large ones keep
more of their initial spectrum. The loss is (stable_rank(W_1(t1)) - target)^2 in log(scale);
its gradient comes through the flow (reverse mode).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import gfsim
from gfsim import analysis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=float, default=1.3)
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    data = gfsim.data.whitened_regression(jax.random.key(0), 12, 4, 3, (3.0, 2.0, 1.0))
    base = gfsim.MLP((4, 6, 6, 3), "linear", key=jax.random.key(1), init="gaussian")

    def rank_at(log_scale):
        tr = gfsim.simulate(gfsim.scaled(base, jnp.exp(log_scale)), data, 3.0,
                            reduction="sum", rtol=1e-8, num_saves=2)
        return analysis.stable_rank(tr.final_weights[0])

    def objective(log_scale):
        return (rank_at(log_scale) - a.target) ** 2

    value_and_grad = jax.jit(jax.value_and_grad(objective))
    opt = optax.adam(0.1)
    x = jnp.asarray(jnp.log(0.1))
    state = opt.init(x)
    for i in range(a.steps):
        v, g = value_and_grad(x)
        upd, state = opt.update(g, state)
        x = optax.apply_updates(x, upd)
        if i % 5 == 0 or i == a.steps - 1:
            print(f"step {i:3d}: scale {float(jnp.exp(x)):.4g}, final stable rank "
                  f"{float(rank_at(x)):.4f} (target {a.target})")


if __name__ == "__main__":
    main()
