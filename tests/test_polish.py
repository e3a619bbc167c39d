"""gfsim.hessian.polish against independent truths: the least-squares fit of a deep linear net
(numpy lstsq), the saddle at zero weights, a ReLU plateau built by hand, and an independent
recomputation of the activation patterns."""

import equinox as eqx
import jax
import jax.flatten_util
import numpy as np
import pytest

import gfsim
from gfsim import analysis, hessian

K1, K2, K3 = jax.random.split(jax.random.key(0), 3)
X = np.asarray(jax.random.normal(K1, (6, 3)))
Y = np.asarray(jax.random.normal(K2, (6, 2)))
DATA = gfsim.Dataset(X, Y)
RNG = np.random.default_rng(0)


def _dense_eigs(net, data, reduction="sum"):
    params, skeleton = eqx.partition(net, eqx.is_array)
    theta, unravel = jax.flatten_util.ravel_pytree(params)

    def f(th):
        return gfsim.objective(eqx.combine(unravel(th), skeleton), data, "square", reduction)

    return np.linalg.eigvalsh(np.asarray(jax.hessian(f)(theta)))


def _grad_norm(net, data, reduction="sum"):
    g = jax.grad(lambda n: gfsim.objective(n, data, "square", reduction))(net)
    return float(np.sqrt(sum(np.sum(np.asarray(w) ** 2) for w in g.weights)))


@pytest.fixture(scope="module")
def near_fit():
    """Three depth-2 linear nets (3 -> 4 -> 2) a small perturbation away from the
    least-squares fit of DATA, where the minima form a manifold (W1 -> A W1, W2 -> W2 A^-1):
    W2 W1 = M^T for a full-rank W1 and W2 = M^T pinv(W1), then every entry nudged by ~1e-3."""
    M, *_ = np.linalg.lstsq(X, Y, rcond=None)
    W1 = RNG.normal(size=(3, 4, 3))
    W2 = np.stack([M.T @ np.linalg.pinv(w) for w in W1])
    return gfsim.MLP.from_weights([W1 + 1e-3 * RNG.normal(size=W1.shape),
                                   W2 + 1e-3 * RNG.normal(size=W2.shape)], "linear")


def test_a_linear_net_near_its_fit_polishes_onto_the_least_squares_solution(near_fit):
    polished, info = hessian.polish(near_fit, DATA, reduction="sum", tol=1e-10)
    assert isinstance(polished, gfsim.MLP) and polished.runs == 3
    assert polished.activation == "linear"
    M, *_ = np.linalg.lstsq(X, Y, rcond=None)  # (d_in, d_out): the end-to-end map is M^T
    end = np.asarray(polished.weights[1] @ polished.weights[0])
    np.testing.assert_allclose(end, np.broadcast_to(M.T, end.shape), rtol=0, atol=1e-10)
    assert info["converged"].all() and (info["grad_norm_after"] < 1e-10).all(), info
    assert (info["steps"] <= 10).all() and not info["pattern_changed"].any()
    for r in range(3):
        # reported numbers recomputed independently
        assert info["grad_norm_after"][r] == pytest.approx(_grad_norm(polished[r], DATA),
                                                           abs=1e-13)
        assert info["grad_norm_before"][r] == pytest.approx(_grad_norm(near_fit[r], DATA),
                                                            rel=1e-10)
        step = np.sqrt(sum(np.sum((np.asarray(a[r]) - np.asarray(b[r])) ** 2)
                           for a, b in zip(polished.weights, near_fit.weights)))
        assert info["distance"][r] == pytest.approx(step, rel=1e-10)
        # the Hessian there is singular (the rescaling symmetries): Newton coped with it
        ev = _dense_eigs(polished[r], DATA)
        assert np.sum(np.abs(ev) < 1e-8 * ev.max()) >= 4, ev


def test_batched_and_unbatched_agree(near_fit):
    batch, info = hessian.polish(near_fit, DATA, reduction="sum")
    one, info1 = hessian.polish(near_fit[1], DATA, reduction="sum")
    # the stationary points form a manifold here: round-off may move the two along it (by
    # ~1e-8), never off it
    for a, b in zip(batch.weights, one.weights):
        np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(batch.weights[1][1] @ batch.weights[0][1]),
                               np.asarray(one.weights[1] @ one.weights[0]), rtol=0, atol=1e-12)
    assert info1["steps"].shape == () and info1["steps"] == info["steps"][1]
    assert info1["distance"] == pytest.approx(info["distance"][1], rel=1e-6)


def test_the_matrix_free_solver_also_reaches_the_least_squares_fit(near_fit, monkeypatch):
    # (a point of the manifold of minima near the dense solver's, not necessarily the same)
    monkeypatch.setattr(hessian, "DENSE_MAX_PARAMS", 0)  # LSMR on Hessian-vector products
    free, info = hessian.polish(near_fit[0], DATA, reduction="sum")
    assert info["converged"]
    M, *_ = np.linalg.lstsq(X, Y, rcond=None)
    np.testing.assert_allclose(np.asarray(free.weights[1] @ free.weights[0]), M.T, atol=1e-10)
    assert info["grad_norm_after"] < 1e-10 and info["distance"] < 0.1


def test_small_weights_polish_to_the_saddle_at_zero_and_classify_as_strict_saddle():
    # zero weights are stationary for a linear net; nearby, Newton finds a stationary point of
    # zero end-to-end map, a strict saddle: lambda_min is -sigma_max(X^T Y) up to O(|W|^2)
    small = gfsim.MLP.from_weights([1e-3 * RNG.normal(size=(3, 4, 3)),
                                    1e-3 * RNG.normal(size=(3, 2, 4))], "linear")
    polished, info = hessian.polish(small, DATA, reduction="sum")
    assert info["converged"].all() and (info["grad_norm_after"] < 1e-10).all()
    assert (info["distance"] < 1e-2).all()
    end = np.asarray(polished.weights[1] @ polished.weights[0])
    assert np.abs(end).max() < 1e-10
    got = analysis.classify_endpoint(polished, DATA, reduction="sum")
    assert (got["kind"] == "strict_saddle").all() and (got["lambda_min"] < 0).all(), got
    sigma = np.linalg.svd(X.T @ Y, compute_uv=False)[0]
    np.testing.assert_allclose(-got["lambda_min"], sigma, rtol=1e-3)
    for r in range(3):
        np.testing.assert_allclose(got["lambda_min"][r], _dense_eigs(polished[r], DATA)[0],
                                   rtol=1e-8)


def plateau_net(perturb=0.0, seed=1):
    """Width-2 ReLU net on the paper's size-2 dataset on the loss-0.25 plateau: unit 1 is
    active on x1 only and fits y1 = e1 exactly, unit 2 is dead on both points, so the output on
    x2 is 0 (error ||e2||^2 over 4 entries: loss 0.25) and the gradient vanishes exactly."""
    data = gfsim.data.paper_pair()
    s = float(data.X[0, 0])
    W1 = np.array([[1.0, 0.0], [0.0, -1.0]])
    W2 = np.array([[1.0 / s, 0.3], [0.0, -0.2]])
    rng = np.random.default_rng(seed)
    W = [W1 + perturb * rng.normal(size=W1.shape), W2 + perturb * rng.normal(size=W2.shape)]
    return gfsim.MLP.from_weights(W, "relu"), data


def test_a_relu_plateau_with_a_dead_unit_is_found_again_and_classified_degenerate():
    exact, data = plateau_net()
    assert float(gfsim.objective(exact, data)) == pytest.approx(0.25, abs=1e-15)
    assert _grad_norm(exact, data, "mean") < 1e-15
    near, _ = plateau_net(perturb=1e-4)
    nets = gfsim.MLP.from_weights([np.stack([a, b]) for a, b in
                                   zip(near.weights, plateau_net(perturb=0.5, seed=3)[0].weights)],
                                  "relu")
    polished, info = hessian.polish(nets, data)
    # the pattern flag, recomputed from the activation patterns
    for r in range(2):
        before = analysis.activation_pattern(nets[r].weights, data.X)
        after = analysis.activation_pattern(polished[r].weights, data.X)
        changed = any(bool(np.any(np.asarray(a) != np.asarray(b)))
                      for a, b in zip(before, after))
        assert info["pattern_changed"][r] == changed
    assert info["converged"][0] and not info["pattern_changed"][0]
    assert info["distance"][0] < 1e-3 and info["grad_norm_before"][0] > 1e-6
    assert float(gfsim.objective(polished[0], data)) == pytest.approx(0.25, abs=1e-12)
    # flat along the dead unit and the rescaling symmetry; no negative curvature inside the
    # pattern (the way off the plateau crosses a kink, which a Hessian does not see)
    got = analysis.classify_endpoint(polished[0], data)
    assert got["kind"].item() == "degenerate", got
    assert info["pattern_changed"][1], info  # the far start: Newton jumps across kinks


def test_the_dense_step_is_the_pseudo_inverse_solution_of_a_singular_symmetric_system():
    import lineax as lx

    A = RNG.normal(size=(6, 3))
    H = A @ np.diag([2.0, -1.0, 0.5]) @ A.T  # symmetric, indefinite, rank 3
    b = RNG.normal(size=6)
    x = lx.linear_solve(lx.MatrixLinearOperator(H), b, hessian._SymmetricPinv()).value
    np.testing.assert_allclose(np.asarray(x), np.linalg.pinv(H) @ b, rtol=1e-10, atol=1e-12)
