"""Derivatives of where and when the flow ends: the small helpers that plain ``jax.grad`` over
:func:`gfsim.simulate` does not give (docs/differentiation.md).

Most functionals need no helper: ``simulate`` is a pure JAX function of the weights, the data
and ``t1``, so ``jax.grad(lambda s: stable_rank(simulate(scaled(net, s), data,
t1).final_weights[0]))`` is the derivative of the final stable rank with respect to an init
scale. What needs a helper is a *time* defined by the flow: the first time the loss falls below
a tolerance. ``simulate(..., stop_loss=tol)`` ends at the end of the solver step that crossed
it (not at the crossing), and its ``t_final`` has derivative zero (it is picked by a boolean).
:func:`stop_time` finds the crossing and differentiates it by the implicit-function rule.

Arguments are checked in plain Python before anything is traced or compiled (one ValueError
naming the argument and what is allowed): ``net`` a bias-free :class:`gfsim.MLP` with finite
weights that fits ``data`` (a :class:`gfsim.Dataset`), ``tol`` and ``t1`` finite numbers > 0 (or
traced), ``scale`` a finite real number (or traced), options that ``simulate`` takes.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _check
from .data import Dataset
from .losses import LOSSES, check_reduction
from .nets import MLP
from .trajectory import Status

_NEWTON_ITERS = 5


def scaled(net: MLP, scale) -> MLP:
    """``net`` with every weight (and bias) multiplied by ``scale`` (traced: differentiate with
    respect to it). Built from an init of scale 1, this is the init of scale ``scale`` for the
    linear-in-scale inits (``gaussian``, ``normal``, ``xavier``, ``orthogonal``, ``disk``)."""
    if not isinstance(net, MLP):
        raise ValueError(f"net={_check._line(net)} ({type(net).__name__}) is not allowed; "
                         "allowed: a gfsim.MLP (one net or a batch).")
    _check.real(scale, "scale")
    return jax.tree_util.tree_map(lambda w: scale * w, net)


def _loss_and_grad2(net, data, loss, reduction):
    from .flow import objective

    params, skeleton = eqx.partition(net, eqx.is_array)

    def f(p):
        return objective(eqx.combine(p, skeleton), data, loss, reduction)

    value, g = jax.value_and_grad(f)(params)
    return value, sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g))


def stop_time(net: MLP, data: Dataset, tol, t1, *, loss: str = "square",
              reduction: str = "mean", **simulate_options):
    """The first time t* at which the loss falls to ``tol``, differentiable with respect to the
    initial weights, the data and ``tol``.

    t* is found by ``simulate(..., stop_loss=tol)`` (the step that crosses) and Newton steps on
    ``L(t) = tol`` with ``dL/dt = -||grad L||^2``, each a solve to the current estimate. Its
    derivative is the implicit-function rule: ``dt*/dp = (dL(theta(t*))/dp) / ||grad L||^2``
    with ``theta(t*)`` differentiated at fixed time through the solve (reverse or forward mode,
    by ``adjoint``). A run that does not reach ``tol`` by ``t1`` gives ``inf``.

    **Arguments:** ``net`` (one net or a batch), ``data``, ``tol`` (> 0), ``t1`` (the horizon of
    the search), ``loss``, ``reduction`` and any other options of :func:`gfsim.simulate`
    (``rtol``, ``method``, ``adjoint``, ...; the accuracy of t* is that of the solve).

    **Returns:** t*, one per run.

    **Cost:** 2 + ``_NEWTON_ITERS`` (5) solves: the stop run and six of one other compiled
    program.

    **Limits:** the rate ``-||grad L||^2`` is that of the plain field: for a ReLU net whose
    flow slides at t* (pairs held on their kinks) it is not the sliding field's, and t* and its
    derivative are then off; a run already below ``tol`` at t = 0 gives 0."""
    _check_stop_time(net, data, tol, t1, loss, reduction, simulate_options)
    kw = dict(loss=loss, reduction=reduction, **simulate_options)
    if net.is_batched or data.is_batched:
        return jax.vmap(lambda n, d: _stop_time_one(n, d, tol, t1, kw),
                        in_axes=(0 if net.is_batched else None,
                                 0 if data.is_batched else None))(net, data)
    return _stop_time_one(net, data, tol, t1, kw)


_SET_BY_STOP_TIME = ("ts", "stop_loss", "stop_grad", "stop_plateau", "num_saves")


def _check_stop_time(net, data, tol, t1, loss, reduction, options) -> None:
    """The arguments of :func:`stop_time` that it owns, in plain Python before anything is
    traced: the options it forwards are checked by ``simulate`` itself, which also runs its
    checks before compiling (under ``vmap`` the weights are traced there, so the finiteness of
    the initial weights is checked here)."""
    import inspect

    from .flow import simulate

    _check.net_and_data(net, data)
    if net.biases is not None:
        raise ValueError("stop_time: net has biases; allowed: a bias-free net (the Trajectory "
                         "keeps final weights only).")
    _check.finite_net(net, "a run cannot start there")
    LOSSES.check(loss, "loss")
    check_reduction(reduction)
    _check.real(tol, "tol", lo=0.0, strict=True)
    _check.real(t1, "t1", lo=0.0, strict=True)
    forwarded = [name for name in inspect.signature(simulate).parameters
                 if name not in ("net", "data", "t1", "loss", "reduction")
                 and name not in _SET_BY_STOP_TIME]
    for name, value in options.items():
        if name in _SET_BY_STOP_TIME:
            raise ValueError(f"{name} is set by stop_time (got {name}={_check._line(value)}); "
                             "allowed: leave it out (stop_time picks the stop and save times).")
        if name not in forwarded:
            raise ValueError(f"stop_time got an unknown option {name}={_check._line(value)}; "
                             f"allowed: the options of gfsim.simulate it forwards: "
                             f"{', '.join(forwarded)}.")


def _stop_time_one(net, data, tol, t1, kw):
    from .flow import simulate

    sg = jax.lax.stop_gradient
    net0, data0, tol0 = sg(net), sg(data), sg(tol)
    from .flow import objective

    first = simulate(net0, data0, t1, stop_loss=tol0, num_saves=2, **kw)
    reached = first.status == Status.STOP_LOSS
    already = objective(net0, data0, kw["loss"], kw["reduction"]) <= tol0  # t* = 0
    t_floor = 1e-12 * t1  # Newton never leaves the interval (0, t1]
    t = jnp.where(reached & ~already, first.t_final, t1)
    for _ in range(_NEWTON_ITERS):
        end = simulate(net0, data0, t, num_saves=2, **kw)
        value, g2 = _loss_and_grad2(MLP.from_weights(end.final_weights, net.activation,
                                                     negative_slope=net.negative_slope),
                                    data0, kw["loss"], kw["reduction"])
        step = jnp.where(g2 > 0, (value - tol0) / jnp.where(g2 > 0, g2, 1.0), 0.0)
        t = jnp.clip(t + jnp.where(reached & ~already, step, 0.0), t_floor, t1)
    t_star = sg(t)
    # theta(t*) as a function of the inputs, at the fixed time t*
    end = simulate(net, data, t_star, num_saves=2, **kw)
    value, g2 = _loss_and_grad2(MLP.from_weights(end.final_weights, net.activation,
                                                 negative_slope=net.negative_slope),
                                data, kw["loss"], kw["reduction"])
    # t* + (L - tol) / |g|^2: its value is t* (L = tol there), its derivative the implicit rule
    residual = value - tol
    correction = (residual - sg(residual)) / sg(jnp.where(g2 > 0, g2, 1.0))
    return jnp.where(already, 0.0, jnp.where(reached, t_star + correction, jnp.inf))
