"""hessian_extremes and classify_endpoint against a dense eigendecomposition and known points."""

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import gfsim
from gfsim import analysis


def _dense_eigs(net, data, loss="square", reduction="mean"):
    params, skeleton = eqx.partition(net, eqx.is_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)

    def f(th):
        return gfsim.objective(eqx.combine(unravel(th), skeleton), data, loss, reduction)

    return np.linalg.eigvalsh(np.asarray(jax.hessian(f)(theta)))


def _problem(activation, runs=None, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    X = jax.random.normal(k1, (5, 3))
    Y = jax.random.normal(k2, (5, 2))
    net = gfsim.MLP((3, 4, 2), activation, key=k3, runs=runs)
    return net, gfsim.Dataset(X, Y)


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_extremes_match_a_dense_eigendecomposition_batched_and_not(activation):
    net, data = _problem(activation, runs=3)
    lo, hi = analysis.hessian_extremes(net, data, k=2, reduction="sum")
    assert lo.shape == hi.shape == (3, 2)
    for r in range(3):
        ev = _dense_eigs(net[r], data, reduction="sum")
        scale = np.max(np.abs(ev))
        np.testing.assert_allclose(np.asarray(lo[r]), ev[:2], rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(np.asarray(hi[r]), ev[::-1][:2], rtol=0, atol=1e-8 * scale)
    lo1, hi1 = analysis.hessian_extremes(net[1], data, k=2, reduction="sum")
    np.testing.assert_allclose(np.asarray(lo1), np.asarray(lo[1]), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(hi1), np.asarray(hi[1]), rtol=1e-10, atol=1e-12)


def test_classify_the_origin_a_strict_saddle_and_a_fitted_net_degenerate():
    net, data = _problem("linear")
    zero = gfsim.MLP.from_weights([jnp.zeros_like(w) for w in net.weights], "linear")
    # at 0 the Hessian of a depth-2 linear net is [[0, -C], [-C^T, 0]] (C the input-target
    # cross-moment): eigenvalues +-sigma(C), a strict saddle
    got = analysis.classify_endpoint(zero, data, reduction="sum")
    assert got["kind"].item() == "strict_saddle" and got["grad_norm"] < 1e-12
    sv = np.linalg.svd(np.asarray(data.X.T @ data.Y), compute_uv=False)
    np.testing.assert_allclose(-got["lambda_min"], sv[0], rtol=1e-8)
    # a net fitted to the least-squares solution: stationary, no negative curvature, and flat
    # along the rescaling symmetries (W1 -> A W1, W2 -> W2 A^-1)
    tr = gfsim.simulate(net, data, 2000.0, reduction="sum", rtol=1e-10, num_saves=2)
    fitted = gfsim.MLP.from_weights(tr.final_weights, "linear")
    end = analysis.classify_endpoint(fitted, data, reduction="sum", grad_tol=1e-7)
    assert end["kind"].item() == "degenerate", end
    # and the start of that run was not stationary
    assert analysis.classify_endpoint(net, data)["kind"].item() == "not_stationary"


def test_classify_a_strict_minimum():
    # one linear layer (depth 1) on full-rank inputs: a convex quadratic, a strict minimum
    X = np.array([[1.0, 0.2], [0.1, 1.0], [0.5, -0.4]])
    Y = np.array([[1.0], [0.0], [0.3]])
    w, *_ = np.linalg.lstsq(X, Y, rcond=None)
    net = gfsim.MLP.from_weights([w.T], "linear")
    got = analysis.classify_endpoint(net, gfsim.Dataset(X, Y), reduction="sum")
    assert got["kind"].item() == "minimum"
    np.testing.assert_allclose(got["lambda_min"], np.linalg.eigvalsh(X.T @ X)[0], rtol=1e-10)


def test_bad_arguments_name_the_field():
    net, data = _problem("relu")
    with pytest.raises(ValueError, match="k=0 is not allowed"):
        analysis.hessian_extremes(net, data, k=0)
    with pytest.raises(ValueError, match="iters=1000 is not allowed"):
        analysis.hessian_extremes(net, data, iters=1000)
    with pytest.raises(ValueError, match="grad_tol"):
        analysis.classify_endpoint(net, data, grad_tol=-1.0)
