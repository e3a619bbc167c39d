"""Shared helpers for the tests: independent reference solutions."""

from __future__ import annotations

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

import gfsim


def saxe_modes(s, a0, t):
    """Closed-form mode strengths of a balanced depth-2 linear net on whitened inputs with the
    sum-convention square loss (Saxe, McClelland & Ganguli 2014): da/dt = 2 a (s - a), so
    a(t) = s / (1 + (s / a0 - 1) exp(-2 s t)). Broadcasts over s, a0 and t."""
    s, a0, t = np.asarray(s), np.asarray(a0), np.asarray(t)
    return s / (1.0 + (s / a0 - 1.0) * np.exp(-2.0 * s * t))


def scipy_flow(net: gfsim.MLP, data: gfsim.Dataset, t_eval, *, loss="square", reduction="sum",
               rtol=1e-12, atol=1e-14, method="DOP853"):
    """Reference: the same gradient flow solved by scipy's solve_ivp on the flat parameter
    vector, with the gradient from a jitted JAX function. Returns (T, P) parameters."""
    from scipy.integrate import solve_ivp

    flat0, unravel = jax.flatten_util.ravel_pytree(list(net.weights))

    @jax.jit
    def rhs(theta):
        def L(th):
            n = gfsim.MLP.from_weights(unravel(th), net.activation)
            return gfsim.objective(n, data, loss, reduction)

        return -jax.grad(L)(theta)

    sol = solve_ivp(lambda t, y: np.asarray(rhs(jnp.asarray(y))), (0.0, float(t_eval[-1])),
                    np.asarray(flat0), method=method, t_eval=np.asarray(t_eval), rtol=rtol,
                    atol=atol)
    assert sol.success, sol.message
    return sol.y.T, unravel


def flat(weights, axis_start=0):
    """Concatenate per-layer arrays (..., out, in) into (..., P)."""
    return jnp.concatenate([w.reshape(*w.shape[: w.ndim - 2], -1) for w in weights], -1)


def run_tiny(name: str, tmp_path_factory):
    """Run experiment ``name`` at its tiny profile and write its store as ``gfsim reproduce``
    does: (result, the store read back by gfsim.load with plain run coordinates, output dir)."""
    from gfsim.reproduce import run_experiment

    out = tmp_path_factory.mktemp(name)
    result = run_experiment(name, "tiny", str(out))
    return result, gfsim.store.flat(gfsim.load(out / result.data_file)), out


def runs(ds, **where):
    """The runs of a store whose coordinates have these values: runs(ds, init="disk")."""
    from gfsim.plots import select

    return select(ds, where)


def values(ds, name, **where):
    """A variable's values over the selected runs."""
    return runs(ds, **where)[name].values


def stored_final_net(ds, run: int, activation: str = "relu") -> gfsim.MLP:
    """The net where run ``run`` of a flat experiment store ended (its ``final_weights``,
    padding trimmed by ``layer_out`` / ``layer_in``, which are 0 or -1 past its depth)."""
    W = ds["final_weights"].values[run]
    shapes = zip(ds["layer_out"].values[run], ds["layer_in"].values[run])
    return gfsim.MLP.from_weights([W[j, :o, :i] for j, (o, i) in enumerate(shapes) if o > 0],
                                  activation)


def endpoint_truth(net: gfsim.MLP, data: gfsim.Dataset, loss: str, reduction: str = "mean"):
    """An independent look at where a net sits: the gradient norm and the dense Hessian's
    eigenvalues (jax.hessian of the flattened loss, numpy eigvalsh); compiled once per shape."""
    g, H = _grad_and_hessian(tuple(net.weights), data.X, data.Y, activation=net.activation,
                             loss=loss, reduction=reduction)
    return float(np.linalg.norm(np.asarray(g))), np.linalg.eigvalsh(np.asarray(H))


@functools.partial(jax.jit, static_argnames=("activation", "loss", "reduction"))
def _grad_and_hessian(weights, X, Y, *, activation, loss, reduction):
    theta, unravel = jax.flatten_util.ravel_pytree(list(weights))
    data = gfsim.Dataset(X, Y)

    def f(th):
        return gfsim.objective(gfsim.MLP.from_weights(unravel(th), activation), data, loss,
                               reduction)

    return jax.grad(f)(theta), jax.hessian(f)(theta)
