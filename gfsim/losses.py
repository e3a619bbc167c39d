"""Training losses and their reduction conventions.

Gradient-flow TIME depends on the convention: with n points and d_out outputs,
``reduction="mean"`` divides the square loss by n*d_out and drops the 1/2 of ``"sum"``, so the
mean-convention flow at time t equals the sum-convention flow at time 2t/(n*d_out). Every
:class:`gfsim.Trajectory` records the loss name and the reduction it was run with.

- ``square``: ``sum`` -> 1/2 sum_i ||f(x_i) - y_i||^2 (the theory convention);
  ``mean`` -> mean over all n*d_out entries of (f - y)^2 (torch's MSELoss, the authors' code).
- ``exponential``: sum (or mean) over entries of exp(-y f), labels y in {-1, +1}.
- ``logistic``: sum (or mean) over entries of log(1 + exp(-y f)).

A mask (matrix completion) restricts every sum to the observed entries and every mean to their
count.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._registry import Registry

REDUCTIONS = ("mean", "sum")

# name -> (per-entry loss, factor applied under reduction="sum")
LOSSES: Registry[tuple[Callable, float]] = Registry("loss")


def register_loss(name: str, elementwise: Callable, *, sum_factor: float = 1.0):
    """Register a loss given by its per-entry value ``elementwise(f, y)``; under
    ``reduction="sum"`` the total is multiplied by ``sum_factor``."""
    return LOSSES.register(name, (elementwise, sum_factor))


register_loss("square", lambda f, y: (f - y) ** 2, sum_factor=0.5)
register_loss("exponential", lambda f, y: jnp.exp(-y * f))
register_loss("logistic", lambda f, y: jax.nn.softplus(-y * f))


def check_reduction(reduction: str) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed; allowed: mean, sum.")
    return reduction


def loss_value(name: str, reduction: str, pred, Y, mask=None):
    """The scalar loss of predictions ``pred`` (n, d_out) against targets ``Y``."""
    elementwise, sum_factor = LOSSES.get(name, "loss")
    check_reduction(reduction)
    per = elementwise(pred, Y)
    if mask is not None:
        per = jnp.where(mask > 0, per, 0.0)  # not per * mask: inf * 0 would be NaN
    if reduction == "sum":
        return sum_factor * jnp.sum(per)
    count = per.size if mask is None else jnp.sum(mask)
    return jnp.sum(per) / count
