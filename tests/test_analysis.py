"""Tests for gfsim.analysis: spectra, rank measures and balancedness invariants, against hand
computations, numpy and identities between the measures."""

import math

import jax
import numpy as np
import pytest

from gfsim import analysis as A

RNG = np.random.default_rng(0)
D34 = np.diag([3.0, 4.0])  # ||.||_F^2 = 25, ||.||_2 = 4, sigma = (4, 3)
D34_WIDE = np.array([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
RANK1 = np.outer([1.0, 2.0, -1.0], [2.0, 0.5])  # (3, 2), rank one


def f(x):
    return float(np.asarray(x))


# ----------------------------------------------------------------------------------------------
# Spectra and rank measures


def test_singular_values_match_numpy():
    w = RNG.normal(size=(3, 5))
    np.testing.assert_allclose(
        np.asarray(A.singular_values(w)), np.linalg.svd(w, compute_uv=False), rtol=1e-13
    )
    batch = RNG.normal(size=(2, 3, 4, 3))
    s = np.asarray(A.singular_values(batch))
    assert s.shape == (2, 3, 3)
    np.testing.assert_allclose(s, np.linalg.svd(batch, compute_uv=False), rtol=1e-13)
    assert np.all(np.diff(s, axis=-1) <= 0)  # descending


@pytest.mark.parametrize("w", [D34, D34_WIDE, D34.T @ np.array([[0.0, 1.0], [1.0, 0.0]])])
def test_hand_computed_rank_measures(w):
    assert f(A.frobenius_norm(w)) == pytest.approx(5.0, rel=1e-15)
    assert f(A.spectral_norm(w)) == pytest.approx(4.0, rel=1e-15)
    assert f(A.stable_rank(w)) == pytest.approx(25 / 16, rel=1e-14)
    assert f(A.spectral_frobenius_ratio(w)) == pytest.approx(4 / 5, rel=1e-14)
    assert f(A.sigma_ratio(w)) == pytest.approx(3 / 4, rel=1e-14)


def test_rank_one_measures():
    assert f(A.stable_rank(RANK1)) == pytest.approx(1.0, rel=1e-14)
    assert f(A.spectral_frobenius_ratio(RANK1)) == pytest.approx(1.0, rel=1e-14)
    assert f(A.sigma_ratio(RANK1)) == pytest.approx(0.0, abs=1e-14)
    assert f(A.effective_rank(RANK1)) == pytest.approx(1.0, abs=1e-12)
    assert int(A.numerical_rank(RANK1)) == 1


def test_stable_rank_identities_on_random_matrix():
    w = RNG.normal(size=(4, 6))
    s = np.linalg.svd(w, compute_uv=False)
    sr = f(A.stable_rank(w))
    assert sr == pytest.approx(np.sum(w**2) / s[0] ** 2, rel=1e-13)
    assert f(A.spectral_frobenius_ratio(w)) == pytest.approx(1 / math.sqrt(sr), rel=1e-13)
    assert 1.0 <= sr <= 4.0
    # Scale invariant.
    assert f(A.stable_rank(7.5 * w)) == pytest.approx(sr, rel=1e-13)


def test_sigma_ratio_needs_two_singular_values():
    with pytest.raises(ValueError,
                       match=r"w has shape \(3, 1\); allowed: matrices with out >= 2 and in >= 2"):
        A.sigma_ratio(np.ones((3, 1)))


def test_stable_rank_of_zero_is_nan():
    assert math.isnan(f(A.stable_rank(np.zeros((2, 2)))))
    assert math.isnan(f(A.effective_rank(np.zeros((2, 2)))))


@pytest.mark.parametrize("n", [1, 3])
def test_effective_rank_of_identity_is_n(n):
    assert f(A.effective_rank(np.eye(n))) == pytest.approx(n, rel=1e-13)
    assert int(A.numerical_rank(np.eye(n))) == n


def test_effective_rank_hand_computed():
    # p = (1/2, 1/4, 1/4): H = 1/2 log 2 + 1/2 log 4 = 3/2 log 2, exp(H) = 2^(3/2).
    assert f(A.effective_rank(np.diag([2.0, 1.0, 1.0]))) == pytest.approx(2**1.5, rel=1e-13)
    # Exact zeros contribute nothing: diag(1, 1, 0) has effective rank 2.
    assert f(A.effective_rank(np.diag([1.0, 1.0, 0.0]))) == pytest.approx(2.0, rel=1e-13)
    # Below the default cutoff (3 * eps * s_max) a singular value counts as zero ...
    assert f(A.effective_rank(np.diag([1.0, 1.0, 1e-17]))) == pytest.approx(2.0, rel=1e-13)
    # ... above it, it counts.
    assert f(A.effective_rank(np.diag([1.0, 1.0, 1e-10]))) > 2.0


def test_effective_rank_cutoff():
    w = np.diag([1.0, 1e-3])
    assert f(A.effective_rank(w, cutoff=1e-2)) == pytest.approx(1.0, rel=1e-14)
    p = np.array([1.0, 1e-3]) / 1.001
    expected = math.exp(-np.sum(p * np.log(p)))
    assert f(A.effective_rank(w, cutoff=1e-4)) == pytest.approx(expected, rel=1e-12)
    assert f(A.effective_rank(w)) == pytest.approx(expected, rel=1e-12)  # default cutoff ~4e-16
    # The cutoff is relative to s_max: scaling W does not change the answer.
    assert f(A.effective_rank(1e6 * w, cutoff=1e-2)) == pytest.approx(1.0, rel=1e-14)


def test_effective_rank_is_between_one_and_rank():
    w = RNG.normal(size=(4, 2)) @ RNG.normal(size=(2, 5))  # rank 2
    e = f(A.effective_rank(w))
    assert 1.0 < e <= 2.0 + 1e-12
    assert int(A.numerical_rank(w)) == 2 == np.linalg.matrix_rank(w)


def test_rank_measures_accept_integer_matrices():
    eye = np.eye(3, dtype=np.int64)
    assert f(A.stable_rank(eye)) == pytest.approx(3.0)
    assert int(A.numerical_rank(eye)) == 3
    assert f(A.effective_rank(eye)) == pytest.approx(3.0)


def test_numerical_rank_tol():
    w = np.diag([1.0, 1e-3, 1e-8])
    assert int(A.numerical_rank(w)) == 3
    assert int(A.numerical_rank(w, tol=1e-5)) == 2
    assert int(A.numerical_rank(w, tol=1e-2)) == 1
    assert int(A.numerical_rank(5.0 * w, tol=1e-5)) == 2  # relative to s_max
    assert int(A.numerical_rank(np.diag([1.0, 1.0, 0.0]))) == 2
    assert int(A.numerical_rank(np.zeros((2, 3)))) == 0


def test_end_to_end_is_the_product():
    ws = [RNG.normal(size=(4, 3)), RNG.normal(size=(5, 4)), RNG.normal(size=(2, 5))]
    np.testing.assert_allclose(np.asarray(A.end_to_end(ws)), ws[2] @ ws[1] @ ws[0], rtol=1e-13)
    np.testing.assert_array_equal(np.asarray(A.end_to_end(ws[:1])), ws[0])


# ----------------------------------------------------------------------------------------------
# Balancedness invariants


WS = [RNG.normal(size=(4, 3)), RNG.normal(size=(5, 4)), RNG.normal(size=(2, 5))]


def test_neuron_balance_matches_numpy():
    nb = [np.asarray(b) for b in A.neuron_balance(WS)]
    assert [b.shape for b in nb] == [(4,), (5,)]
    for j in range(2):
        outgoing = np.array([np.sum(WS[j + 1][:, i] ** 2) for i in range(WS[j].shape[0])])
        incoming = np.array([np.sum(WS[j][i, :] ** 2) for i in range(WS[j].shape[0])])
        np.testing.assert_allclose(nb[j], outgoing - incoming, rtol=1e-13, atol=1e-13)


def test_layer_balance_matches_numpy():
    lb = np.asarray(A.layer_balance(WS))
    assert lb.shape == (2,)
    expected = [np.sum(WS[1] ** 2) - np.sum(WS[0] ** 2), np.sum(WS[2] ** 2) - np.sum(WS[1] ** 2)]
    np.testing.assert_allclose(lb, expected, rtol=1e-13)


def test_matrix_balance_matches_numpy_and_its_diagonal_is_neuron_balance():
    mb = [np.asarray(m) for m in A.matrix_balance(WS)]
    nb = [np.asarray(b) for b in A.neuron_balance(WS)]
    lb = np.asarray(A.layer_balance(WS))
    for j in range(2):
        expected = WS[j + 1].T @ WS[j + 1] - WS[j] @ WS[j].T
        np.testing.assert_allclose(mb[j], expected, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(mb[j], mb[j].T, atol=1e-13)  # symmetric
        np.testing.assert_allclose(np.diag(mb[j]), nb[j], rtol=1e-13, atol=1e-13)
        assert np.trace(mb[j]) == pytest.approx(lb[j], rel=1e-12)


def test_balance_invariants_vanish_for_balanced_linear_chain():
    # W_j = Q_j S Q_{j-1}^T with orthogonal Q's is balanced: every invariant is zero.
    q = [np.linalg.qr(RNG.normal(size=(3, 3)))[0] for _ in range(3)]
    s = np.diag([2.0, 1.0, 0.5])
    ws = [q[1] @ s @ q[0].T, q[2] @ s @ q[1].T]
    np.testing.assert_allclose(np.asarray(A.matrix_balance(ws)[0]), 0.0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(A.neuron_balance(ws)[0]), 0.0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(A.layer_balance(ws)), 0.0, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# Broadcasting over leading (runs, T) axes


def test_broadcasting_over_runs_and_time_equals_a_loop():
    runs, T = 2, 3
    ws = [RNG.normal(size=(runs, T, 4, 3)), RNG.normal(size=(runs, T, 2, 4))]
    scalar_fns = [
        A.frobenius_norm,
        A.spectral_norm,
        A.stable_rank,
        A.spectral_frobenius_ratio,
        A.sigma_ratio,
        A.effective_rank,
        A.numerical_rank,
    ]
    for fn in scalar_fns:
        out = np.asarray(fn(ws[0]))
        assert out.shape == (runs, T), fn.__name__
        loop = np.array([[np.asarray(fn(ws[0][r, t])) for t in range(T)] for r in range(runs)])
        np.testing.assert_allclose(out, loop, rtol=1e-12, err_msg=fn.__name__)

    e2e = np.asarray(A.end_to_end(ws))
    nb = np.asarray(A.neuron_balance(ws)[0])
    lb = np.asarray(A.layer_balance(ws))
    mb = np.asarray(A.matrix_balance(ws)[0])
    assert e2e.shape == (runs, T, 2, 3) and nb.shape == (runs, T, 4)
    assert lb.shape == (runs, T, 1) and mb.shape == (runs, T, 4, 4)
    for r in range(runs):
        for t in range(T):
            w = [ws[0][r, t], ws[1][r, t]]
            np.testing.assert_allclose(e2e[r, t], w[1] @ w[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(
                mb[r, t], w[1].T @ w[1] - w[0] @ w[0].T, rtol=1e-12, atol=1e-14
            )
            np.testing.assert_allclose(
                nb[r, t], np.sum(w[1] ** 2, 0) - np.sum(w[0] ** 2, 1), rtol=1e-12, atol=1e-14
            )
            assert lb[r, t, 0] == pytest.approx(np.sum(w[1] ** 2) - np.sum(w[0] ** 2), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# balance_drift


# Widths (1, 2, 1), two save times (axis -3):
#   t0: W1 = [[1], [0]], W2 = [[1, 0]]  -> neuron invariants (1-1, 0-0) = (0, 0), sum ||W||^2 = 2
#   t1: W1 = [[1], [1]], W2 = [[2, 0]]  -> neuron invariants (4-1, 0-1) = (3, -1), sum = 6
# neuron drift = 3/6; layer drift = |2 - 0|/6; matrix: W2^T W2 - W1 W1^T is zero at t0 and
# [[3, -1], [-1, -1]] at t1, so matrix drift = 3/6.
TWO_T_W1 = np.array([[[1.0], [0.0]], [[1.0], [1.0]]])  # (T=2, 2, 1)
TWO_T_W2 = np.array([[[1.0, 0.0]], [[2.0, 0.0]]])  # (T=2, 1, 2)
TWO_T_EXPECTED = {"neuron": 0.5, "layer": 1 / 3, "matrix": 0.5}

# balance_drift is many small ops: one compile per shape under jit is several times faster than
# compiling each op eagerly. Its Python logic (kind check, axis handling) runs at trace time.
drift = jax.jit(A.balance_drift, static_argnames=("kind", "time_axis"))


@pytest.mark.parametrize("kind", ["neuron", "layer", "matrix"])
def test_balance_drift_hand_computed(kind):
    got = f(drift([TWO_T_W1, TWO_T_W2], kind=kind))
    assert got == pytest.approx(TWO_T_EXPECTED[kind], rel=1e-14)


@pytest.mark.parametrize("kind", ["neuron", "layer", "matrix"])
def test_balance_drift_is_zero_for_constant_weights(kind):
    ws = [np.stack([w, w]) for w in WS]  # (T=2, out, in), depth 3
    assert f(drift(ws, kind=kind)) == 0.0


def test_balance_drift_ignores_nan_slots_and_broadcasts_over_runs():
    nan_w1 = np.full((1, 2, 1), np.nan)
    nan_w2 = np.full((1, 1, 2), np.nan)
    ws = [np.concatenate([TWO_T_W1, nan_w1]), np.concatenate([TWO_T_W2, nan_w2])]  # T = 3
    for kind, expected in TWO_T_EXPECTED.items():
        assert f(drift(ws, kind=kind)) == pytest.approx(expected, rel=1e-14)

    # A batch of two runs (runs, T, out, in): run 0 constant (drift 0), run 1 the example above.
    const = [np.stack([TWO_T_W1[0]] * 2), np.stack([TWO_T_W2[0]] * 2)]
    batch = [np.stack([const[0], TWO_T_W1]), np.stack([const[1], TWO_T_W2])]
    out = np.asarray(drift(batch, kind="neuron"))
    np.testing.assert_allclose(out, [0.0, 0.5], rtol=1e-14)
    # The same batch with time first (T, runs, out, in) and time_axis=0.
    time_first = [np.swapaxes(b, 0, 1) for b in batch]
    np.testing.assert_allclose(
        np.asarray(drift(time_first, kind="neuron", time_axis=0)), [0.0, 0.5], rtol=1e-14
    )


def test_balance_drift_rejects_unknown_kind():
    with pytest.raises(ValueError,
                       match="kind=.frobenius. is not allowed; allowed: neuron, layer, matrix"):
        A.balance_drift([TWO_T_W1, TWO_T_W2], kind="frobenius")


# -- activation patterns ------------------------------------------------------------------------


def test_preactivations_and_pattern_by_hand():
    W1 = np.array([[1.0, -1.0], [0.0, 2.0], [1.0, 1.0]])
    W2 = np.array([[1.0, 2.0, -1.0]])
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z1, z2 = A.preactivations([W1, W2], X)
    np.testing.assert_array_equal(z1, X @ W1.T)
    np.testing.assert_array_equal(z2, np.maximum(X @ W1.T, 0) @ W2.T)
    (p,) = A.activation_pattern([W1, W2], X)
    # z1 = [[1, 0, 1], [-1, 2, 1], [0, 2, 2]]; a zero pre-activation is inactive (s'(0) = 0).
    np.testing.assert_array_equal(
        p, [[True, False, True], [False, True, True], [False, True, True]]
    )
    (k,) = A.kink_units([W1, W2], X, rtol=1e-12)
    np.testing.assert_array_equal(k, [[False, True, False], [False, False, False],
                                      [True, False, False]])
    zl, _ = A.preactivations([W1, W2], X, activation="linear")
    np.testing.assert_array_equal(zl, z1)


def test_pattern_changes_counts_flips_between_saves():
    X = np.array([[1.0, 0.0], [0.0, 1.0]])
    W2 = np.ones((1, 1))
    # One unit; its incoming weights rotate so that it switches on x2 at the 2nd save and off
    # on x1 at the 3rd: two flips in all. A NaN slot (early stop) is skipped.
    W1 = np.array([[[1.0, -1.0]], [[1.0, 1.0]], [[-1.0, 1.0]], [[np.nan, np.nan]]])
    W2t = np.broadcast_to(W2, (4, 1, 1))
    assert int(A.pattern_changes([W1, W2t], X)) == 2
    # Leading run axis.
    both = [np.stack([W1, W1[::-1]]), np.stack([W2t, W2t])]
    np.testing.assert_array_equal(A.pattern_changes(both, X), [2, 2])
