"""Hostile input to gfsim.analysis: every malformed argument is one ValueError or TypeError that
names the argument, shows its shape or type and says what is allowed, raised before any
computation (the module's jnp is replaced by a tripwire while the checks run). Well-formed input
of any accepted kind (nested lists, integers, batches) gives NumPy's answer, and NaN/inf entries
are data (the NaN save slots of a trajectory), not errors."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gfsim import analysis

HYP = settings(max_examples=30, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])

MATRIX_FUNCTIONS = ["singular_values", "frobenius_norm", "spectral_norm", "stable_rank",
                    "spectral_frobenius_ratio", "effective_rank", "numerical_rank"]
W2 = [np.ones((3, 2)), np.ones((1, 3))]  # a valid depth-2 net (2 -> 3 -> 1)
X = np.ones((4, 2))


class _Tripwire:
    def __getattr__(self, name):
        raise AssertionError(f"analysis computed (jnp.{name}) before refusing its input")


@pytest.fixture
def no_computation(monkeypatch):
    monkeypatch.setattr(analysis, "jnp", _Tripwire())


def raises_naming(field, fn, *, what=()):
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    assert field in msg and "allowed" in msg, msg
    for w in what:  # the value's shape or type
        assert w in msg, f"{w!r} not in: {msg}"
    return info


not_a_matrix = st.one_of(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=1, max_side=4)),  # 0-D, 1-D
    st.lists(st.floats(-1, 1), max_size=4),                                          # 1-D list
    st.sampled_from([np.zeros((0, 3)), np.zeros((3, 0)), np.zeros((2, 0, 0)), [[]], 3.0]))
not_real = st.sampled_from([np.ones((2, 2)) * 1j, np.array([["a", "b"], ["c", "d"]]),
                            np.array([[None, 1.0]] * 2, dtype=object), [[1.0, 2.0], [3.0]],
                            "abc", None, {"w": 1}, [["x", "y"]]])


@HYP
@given(bad=not_a_matrix)
@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS + ["sigma_ratio"])
def test_matrix_functions_refuse_wrong_ranks_and_empty_matrices(fn, bad, no_computation):
    shape = str(tuple(np.shape(bad)))
    info = raises_naming("w", lambda: getattr(analysis, fn)(bad), what=(shape,))
    assert info.type is ValueError and "at least 2 dims" in str(info.value)


@HYP
@given(bad=not_real)
@pytest.mark.parametrize("fn", MATRIX_FUNCTIONS)
def test_matrix_functions_refuse_non_numeric_input(fn, bad, no_computation):
    info = raises_naming("w", lambda: getattr(analysis, fn)(bad))
    assert info.type is TypeError
    msg = str(info.value)
    assert "dtype" in msg or type(bad).__name__ in msg or "nested lists" in msg


def test_sigma_ratio_needs_two_singular_values(no_computation):
    raises_naming("w", lambda: analysis.sigma_ratio(np.ones((5, 1))), what=("(5, 1)",))


@pytest.mark.parametrize("field, kwargs", [
    ("cutoff", {"cutoff": -1.0}), ("cutoff", {"cutoff": "small"}), ("cutoff", {"cutoff": math.nan}),
])
def test_cutoff_and_tol_are_non_negative_reals(field, kwargs, no_computation):
    raises_naming(field, lambda: analysis.effective_rank(np.eye(2), **kwargs))
    raises_naming("tol", lambda: analysis.numerical_rank(np.eye(2), tol=kwargs["cutoff"]))


def _timed(w):
    """A time axis on each well-formed 2-D layer (the rest left malformed)."""
    if not isinstance(w, list):
        return w
    return [x[None] if isinstance(x, np.ndarray) and x.ndim == 2 else x for x in w]


LAYER_FUNCTIONS = {
    "end_to_end": (lambda w: analysis.end_to_end(w), 1),
    "neuron_balance": (lambda w: analysis.neuron_balance(w), 2),
    "layer_balance": (lambda w: analysis.layer_balance(w), 2),
    "matrix_balance": (lambda w: analysis.matrix_balance(w), 2),
    "balance_drift": (lambda w: analysis.balance_drift(_timed(w)), 2),
    "pattern_changes": (lambda w: analysis.pattern_changes(_timed(w), X), 1),
    "preactivations": (lambda w: analysis.preactivations(w, X), 1),
    "activation_pattern": (lambda w: analysis.activation_pattern(w, X), 1),
    "kink_units": (lambda w: analysis.kink_units(w, X), 1),
}


@pytest.mark.parametrize("name", sorted(LAYER_FUNCTIONS))
def test_weights_must_be_a_list_of_chaining_matrices(name, no_computation):
    fn, min_layers = LAYER_FUNCTIONS[name]
    # one array instead of a list of layers (traj.weights[0] for traj.weights)
    raises_naming("weights", lambda: fn(np.ones((3, 3, 2))), what=("(3, 3, 2)", "ndarray"))
    raises_naming("weights", lambda: fn("W"), what=("str",))
    raises_naming("weights", lambda: fn([]))
    if min_layers == 2:
        raises_naming("weights", lambda: fn([np.ones((3, 2))]), what=("1 layers",))
    # a malformed layer is named by its index
    raises_naming("weights[1]", lambda: fn([np.ones((3, 2)), np.ones(3)]), what=("(3,)",))
    raises_naming("weights[0]", lambda: fn([[["a", "b"]] * 3, np.ones((1, 3))]),
                  what=("dtype",))
    # shapes that do not chain: layer 1 must take layer 0's 3 outputs
    info = raises_naming("weights[1]", lambda: fn([np.ones((3, 2)), np.ones((1, 4))]),
                         what=("1, 4)",))
    assert "(..., out, 3)" in str(info.value)


@pytest.mark.parametrize("name", ["preactivations", "activation_pattern", "kink_units",
                                  "pattern_changes"])
@pytest.mark.parametrize("bad, what", [
    (np.ones(2), "(2,)"), (np.ones((4, 3)), "(4, 3)"), (np.ones((0, 2)), "(0, 2)"),
    ("points", "str"), (None, "NoneType"), (np.ones((4, 2)) * 1j, "complex"),
])
def test_inputs_must_be_points_of_the_first_layers_width(name, bad, what, no_computation):
    w = [x[None] for x in W2] if name == "pattern_changes" else W2
    raises_naming("X", lambda: getattr(analysis, name)(w, bad), what=(what,))


@pytest.mark.parametrize("kwargs, field", [
    ({"kind": "neurons"}, "kind"), ({"kind": 3}, "kind"), ({"time_axis": -1}, "time_axis"),
    ({"time_axis": 5}, "time_axis"), ({"time_axis": 0.5}, "time_axis"),
    ({"time_axis": True}, "time_axis"),
])
def test_balance_drift_options(kwargs, field, no_computation):
    raises_naming(field, lambda: analysis.balance_drift([x[None] for x in W2], **kwargs))


def test_time_axis_is_required_and_rtol_checked(no_computation):
    raises_naming("weights[0]", lambda: analysis.balance_drift(W2), what=("(3, 2)", "T"))
    raises_naming("weights[0]", lambda: analysis.pattern_changes(W2, X), what=("(3, 2)",))
    raises_naming("weights[1]", lambda: analysis.balance_drift([W2[0][None], W2[1]]),
                  what=("(1, 3)", "time axis"))
    raises_naming("rtol", lambda: analysis.kink_units(W2, X, rtol=-1e-6))


@pytest.mark.parametrize("name", ["sliding_counts", "sliding_units", "event_counts"])
def test_trajectory_functions_refuse_other_objects(name, no_computation):
    raises_naming("traj", lambda: getattr(analysis, name)(W2), what=("list",))


# -- well-formed input of every accepted kind --------------------------------------------------

matrices = hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 4),
                                            st.integers(1, 4)),
                      elements=st.floats(-10, 10, allow_subnormal=False))


@HYP
@given(w=matrices)
def test_lists_and_integer_arrays_give_numpys_answer(w):
    s = np.linalg.svd(w, compute_uv=False)
    np.testing.assert_allclose(analysis.singular_values(w.tolist()), s, atol=1e-9)
    np.testing.assert_allclose(analysis.frobenius_norm(w.tolist()),
                               np.linalg.norm(w, axis=(-2, -1)), rtol=1e-12)
    wi = np.round(w).astype(np.int64)  # integers are converted to float
    np.testing.assert_allclose(analysis.singular_values(wi),
                               np.linalg.svd(wi.astype(float), compute_uv=False), atol=1e-9)


@HYP
@given(w=matrices, which=st.integers(0, 2), bad=st.sampled_from([math.nan, math.inf]))
def test_non_finite_matrices_give_nan_only_for_themselves(w, which, bad):
    which %= w.shape[0]
    w = w.copy()
    w[which, 0, 0] = bad
    sr = np.asarray(analysis.stable_rank(w))
    assert np.isnan(sr[which])
    others = np.delete(np.arange(w.shape[0]), which)
    ref = np.linalg.svd(w[others], compute_uv=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_allclose(sr[others], np.sum(ref**2, -1) / ref[:, 0] ** 2, rtol=1e-9)
