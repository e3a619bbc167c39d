"""Tests for gfsim.data: the Dataset container and the generators of the paper's experiments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gfsim
from gfsim.data import (
    Dataset,
    matrix_completion,
    pair_angle,
    pair_points,
    paper_angle,
    paper_pair,
    random_pairs,
    sphere,
    stack,
    teacher_student,
    whitened_regression,
)

KEY = jax.random.key(0)


def unit_norms(x):
    return np.linalg.norm(np.asarray(x), axis=-1)


# ----------------------------------------------------------------------------------------------
# The paper's size-2 dataset


def test_paper_pair_matches_authors_points():
    data = paper_pair()
    X, Y = np.asarray(data.X), np.asarray(data.Y)
    assert X.shape == (2, 2) and Y.shape == (2, 2) and X.dtype == np.float64
    norm = math.sqrt(1 + 0.99**2)
    np.testing.assert_allclose(X, np.array([[1, 0.99], [-1, 0.99]]) / norm, atol=1e-15)
    np.testing.assert_allclose(unit_norms(X), 1.0, atol=1e-15)
    np.testing.assert_array_equal(Y, np.eye(2))
    cos = X[0] @ X[1]
    # (0.99^2 - 1) / (0.99^2 + 1) = -0.0199 / 1.9801
    assert cos == pytest.approx(-0.01005, abs=1e-5)
    assert cos == pytest.approx(-0.0199 / 1.9801, abs=1e-14)


def test_paper_angle_and_pair_angle():
    expected = math.acos(-0.0199 / 1.9801)  # just above 90 degrees
    assert paper_angle() == pytest.approx(expected, abs=1e-14)
    assert 90 < math.degrees(paper_angle()) < 91
    assert float(pair_angle(paper_pair())) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("angle", [0.3, 1.0, 2.5])
def test_pair_points_at_given_angle(angle):
    X = np.asarray(pair_points(angle, dim=4))
    assert X.shape == (2, 4)
    np.testing.assert_allclose(unit_norms(X), 1.0, atol=1e-15)
    assert math.acos(X[0] @ X[1]) == pytest.approx(angle, abs=1e-12)
    # Symmetric about the second axis, zero beyond the first two coordinates.
    assert X[0, 0] == pytest.approx(-X[1, 0]) and X[0, 1] == pytest.approx(X[1, 1])
    np.testing.assert_array_equal(X[:, 2:], 0.0)
    data = paper_pair(angle=angle, dim=4)
    assert float(pair_angle(data)) == pytest.approx(angle, abs=1e-12)


@pytest.mark.parametrize("angle, dim", [(0.0, 2), (math.pi, 2), (-0.5, 2), (1.0, 1)])
def test_pair_points_rejects_bad_arguments(angle, dim):
    with pytest.raises(ValueError, match="angle" if dim >= 2 else "dim"):
        pair_points(angle, dim)


def test_random_pairs_batch():
    data = random_pairs(KEY, 5, dim=3)
    X, Y = np.asarray(data.X), np.asarray(data.Y)
    assert data.runs == 5 and X.shape == (5, 2, 3) and Y.shape == (5, 2, 2)
    np.testing.assert_allclose(unit_norms(X), 1.0, atol=1e-14)
    np.testing.assert_array_equal(Y, np.broadcast_to(np.eye(2), (5, 2, 2)))
    expected = np.arccos(np.clip(np.einsum("rd,rd->r", X[:, 0], X[:, 1]), -1, 1))
    np.testing.assert_allclose(np.asarray(pair_angle(data)), expected, atol=1e-12)
    # The runs are different datasets.
    assert len(np.unique(np.round(expected, 8))) == 5
    # Indexing a batch gives the single dataset.
    one = data[2]
    assert one.runs is None
    np.testing.assert_array_equal(np.asarray(one.X), X[2])


# ----------------------------------------------------------------------------------------------
# General generators


def test_sphere_points_and_target_modes():
    ones = sphere(KEY, 200, 3, d_out=2)
    X = np.asarray(ones.X)
    assert X.shape == (200, 3) and ones.Y.shape == (200, 2)
    np.testing.assert_allclose(unit_norms(X), 1.0, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(ones.Y), 1.0)
    # Uniform on the sphere: mean near 0, second moment I/3.
    assert np.all(np.abs(X.mean(0)) < 0.15)
    np.testing.assert_allclose(X.T @ X / 200, np.eye(3) / 3, atol=0.08)

    signs = np.asarray(sphere(KEY, 200, 3, d_out=2, targets="signs").Y)
    assert set(np.unique(signs)) == {-1.0, 1.0}
    assert 0.35 < np.mean(signs == 1.0) < 0.65

    gauss = np.asarray(sphere(KEY, 200, 3, d_out=2, targets="gaussian").Y)
    assert abs(gauss.mean()) < 0.2 and abs(gauss.std() - 1.0) < 0.15

    with pytest.raises(ValueError, match="targets='zeros'.*allowed: ones, gaussian, signs"):
        sphere(KEY, 10, 3, targets="zeros")


def test_teacher_student_sign_and_regression_labels():
    n, dim = 300, 6
    sign = teacher_student(KEY, n, dim)
    reg = teacher_student(KEY, n, dim, labels="regression")
    X = np.asarray(sign.X)
    assert X.shape == (n, dim) and sign.Y.shape == (n, 1)
    np.testing.assert_allclose(unit_norms(X), 1.0, atol=1e-14)
    assert np.all(X >= 0)
    ys = np.asarray(sign.Y)[:, 0]
    assert set(np.unique(ys)) == {-1.0, 1.0}
    assert 5 < np.sum(ys == 1) < n - 5
    # Same key: same inputs, and the sign labels are the signs of the regression labels.
    np.testing.assert_array_equal(np.asarray(reg.X), X)
    yr = np.asarray(reg.Y)[:, 0]
    np.testing.assert_array_equal(ys, np.where(yr >= 0, 1.0, -1.0))
    # A depth-2 bias-free teacher with total parameter norm 1 has |N(x)| <= ||W2|| ||W1|| ||x||
    # <= (||W1||^2 + ||W2||^2) / 2 = 1/2 on unit inputs (AM-GM).
    assert np.max(np.abs(yr)) <= 0.5
    assert np.max(np.abs(yr)) > 0  # not degenerate
    with pytest.raises(ValueError, match="labels='class'.*allowed: sign, regression"):
        teacher_student(KEY, 10, 3, labels="class")


@pytest.mark.parametrize("svals", [(3.0, 1.5, 0.5), (2.0, 0.25)])
def test_whitened_regression(svals):
    n, d_in, d_out = 7, 4, 3
    data = whitened_regression(KEY, n, d_in, d_out, svals)
    X, Y = np.asarray(data.X), np.asarray(data.Y)
    assert X.shape == (n, d_in) and Y.shape == (n, d_out)
    np.testing.assert_allclose(X.T @ X, np.eye(d_in), atol=1e-13)
    corr = Y.T @ X  # = A, the input-output correlation
    s = np.linalg.svd(corr, compute_uv=False)
    expected = np.zeros(min(d_in, d_out))
    expected[: len(svals)] = svals
    np.testing.assert_allclose(s, expected, atol=1e-12)
    # Y is exactly the linear map A applied to the inputs.
    np.testing.assert_allclose(Y, X @ corr.T, atol=1e-13)


def test_whitened_regression_errors():
    with pytest.raises(ValueError, match="n=3 must be >= d_in=4"):
        whitened_regression(KEY, 3, 4, 2, (1.0,))
    with pytest.raises(ValueError, match="3 singular values given; at most min"):
        whitened_regression(KEY, 5, 4, 2, (1.0, 1.0, 1.0))


def test_matrix_completion():
    rows, cols, rank = 40, 30, 3
    data = matrix_completion(KEY, rows, cols, rank, observed=0.3)
    X, Y, mask = np.asarray(data.X), np.asarray(data.Y), np.asarray(data.mask)
    np.testing.assert_array_equal(X, np.eye(cols))
    assert Y.shape == (cols, rows) and mask.shape == (cols, rows)
    assert np.linalg.matrix_rank(Y) == rank
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert abs(mask.mean() - 0.3) < 0.05  # 1200 Bernoulli(0.3) draws: std 0.013
    # M = U V^T / sqrt(rank) with standard Gaussian factors has unit-variance entries (the
    # empirical mean square fluctuates by ~20% as the entries share 3 factors; no normalisation
    # would give ~3, dividing by rank ~1/3).
    assert 0.4 < np.mean(Y**2) < 2.0
    full = matrix_completion(KEY, rows, cols, rank, observed=1.0)
    np.testing.assert_array_equal(np.asarray(full.mask), 1.0)
    np.testing.assert_array_equal(np.asarray(full.Y), Y)  # same key, same target


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(observed=0.0), "observed=0.0 must be in"),
        (dict(observed=1.5), "observed=1.5 must be in"),
        (dict(rank=0), "rank=0 must be between"),
        (dict(rank=5), "rank=5 must be between"),
    ],
)
def test_matrix_completion_errors(kwargs, match):
    args = {"rank": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        matrix_completion(KEY, 5, 4, **args)


# ----------------------------------------------------------------------------------------------
# Dataset validation


def test_dataset_1d_targets_become_column():
    d = Dataset(np.ones((4, 3)), np.arange(4.0))
    assert d.Y.shape == (4, 1) and d.n == 4 and d.d_in == 3 and d.d_out == 1
    np.testing.assert_array_equal(np.asarray(d.Y)[:, 0], np.arange(4.0))
    b = Dataset(np.ones((2, 4, 3)), np.ones((2, 4)))
    assert b.Y.shape == (2, 4, 1) and b.runs == 2 and b.is_batched


def test_dataset_integer_inputs_become_float64():
    d = Dataset(np.ones((3, 2), dtype=np.int32), np.ones((3, 1), dtype=np.int32))
    assert d.X.dtype == jnp.float64 and d.Y.dtype == jnp.float64


@pytest.mark.parametrize(
    "X, Y, match",
    [
        (np.ones((4, 3)), np.ones((5, 1)), "X and Y must agree"),
        (np.ones(3), np.ones(3), r"X must have shape \(n, d_in\)"),
        (np.ones((2, 2, 2, 2)), np.ones((2, 2, 2, 1)), r"X must have shape"),
        (np.ones((4, 3)), np.ones((1, 4, 1)), r"Y must have shape \(n, d_out\)"),
        (np.zeros((0, 3)), np.zeros((0, 1)), "at least one data point"),
        (np.array([[1.0, np.nan]]), np.ones((1, 1)), "X contains non-finite"),
        (np.ones((2, 2)), np.array([[1.0], [np.inf]]), "Y contains non-finite"),
        (np.ones((2, 2)), np.array([np.nan, 1.0]), "Y contains non-finite"),
    ],
)
def test_dataset_validation_errors(X, Y, match):
    with pytest.raises(ValueError, match=match):
        Dataset(X, Y)


def test_dataset_mask_shape_error_and_single_indexing():
    with pytest.raises(ValueError, match=r"mask must have Y's shape \(2, 3\)"):
        Dataset(np.ones((2, 2)), np.ones((2, 3)), mask=np.ones((3, 2)))
    with pytest.raises(ValueError, match="mask must hold only 0 .* and 1"):
        Dataset(np.ones((2, 2)), np.ones((2, 3)), mask=np.full((2, 3), 0.5))
    with pytest.raises(TypeError, match="batch"):
        Dataset(np.ones((2, 2)), np.ones((2, 1)))[0]


def test_stack_builds_a_batch():
    a = paper_pair()
    b = paper_pair(angle=1.0)
    batch = stack([a, b])
    assert batch.runs == 2 and batch.X.shape == (2, 2, 2)
    np.testing.assert_allclose(np.asarray(pair_angle(batch)), [paper_angle(), 1.0], atol=1e-12)


def test_dataset_is_exported():
    assert gfsim.Dataset is Dataset
