"""Runs that fail end fast, each with its own status, and leave the rest of the batch alone."""

import jax
import numpy as np
import pytest

import gfsim
from gfsim import Status

KEY = jax.random.key(0)
DATA = gfsim.data.sphere(KEY, 3, 2)


@pytest.fixture(scope="module")
def batch():
    """One batch of three linear nets: run 0 overflows at t = 0 (weights x 1e200: the loss is
    inf), run 1 is stiff (weights x 1e3: on Tsit5 alone the step budget runs out; the default
    solver="auto" gets through it, tests/test_stiff.py), run 2 is ordinary."""
    w = [np.array(a) for a in gfsim.MLP((2, 3, 1), "linear", key=KEY, runs=3).weights]
    for a in w:
        a[0] *= 1e200
        a[1] *= 1e3
    nets = gfsim.MLP.from_weights(w, "linear")
    kw = dict(num_saves=4, max_steps=2000, solver="tsit5")
    alone = gfsim.simulate(nets[2:], DATA, 10.0, **kw)
    return gfsim.simulate(nets, DATA, 10.0, **kw), alone


def test_overflowing_start_ends_nonfinite_at_t0_without_spending_the_budget(batch):
    tr, _ = batch
    assert tr.status[0] == Status.NONFINITE
    assert float(tr.t_final[0]) == 0.0
    # it used to reject every step at t = 0 until max_steps (2000 here)
    assert int(tr.num_steps[0]) < 50
    assert np.isinf(float(tr.final_loss[0]))
    assert np.all(np.isnan(np.asarray(tr.loss[0, 1:])))   # never reached: NaN, as after a stop


def test_stiff_run_ends_with_max_steps(batch):
    tr, _ = batch
    assert tr.status[1] == Status.MAX_STEPS and int(tr.num_steps[1]) == 2000
    assert 0.0 <= float(tr.t_final[1]) < 10.0


def test_the_rest_of_the_batch_is_unaffected(batch):
    tr, alone = batch
    assert tr.status[2] == Status.REACHED_T1
    np.testing.assert_allclose(np.asarray(tr.final_loss[2]), np.asarray(alone.final_loss[0]),
                               rtol=1e-6)
    assert tr.status_counts() == {"reached_t1": 1, "max_steps": 1, "nonfinite": 1}


def test_gd_with_a_huge_step_size_ends_nonfinite():
    nets = gfsim.MLP((2, 3, 1), "linear", key=KEY, runs=2)
    tr = gfsim.gd(nets, DATA, 1e10, 20, num_saves=3)
    assert list(tr.status_labels()) == ["nonfinite", "nonfinite"]
    ok = gfsim.gd(nets, DATA, 1e-2, 20, num_saves=3)   # same program, sane lr
    assert list(ok.status_labels()) == ["reached_t1", "reached_t1"]


def test_event_solver_overflowing_start_is_done_at_once():
    """The same under method="events" (ReLU): the run whose loss overflows at t = 0 ends
    nonfinite with no step taken, the other runs of the batch are as if alone."""
    w = [np.array(a) for a in gfsim.MLP((2, 3, 1), key=KEY, runs=2).weights]
    for a in w:
        a[0] *= 1e200
    nets = gfsim.MLP.from_weights(w)
    tr = gfsim.simulate(nets, DATA, 5.0, num_saves=4, max_steps=2000)
    alone = gfsim.simulate(nets[1:], DATA, 5.0, num_saves=4, max_steps=2000)
    assert tr.status_labels().tolist() == ["nonfinite", "reached_t1"]
    assert int(tr.num_steps[0]) == 0 and float(tr.t_final[0]) == 0.0
    assert int(tr.num_steps[1]) == int(alone.num_steps[0])
    np.testing.assert_allclose(np.asarray(tr.final_loss[1]), np.asarray(alone.final_loss[0]),
                               rtol=1e-10)
