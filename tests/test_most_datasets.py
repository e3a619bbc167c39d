"""Experiment "most_datasets": random size-2 datasets, final stable rank of W1 vs the angle."""

import math
import os

import numpy as np
import pytest
from helpers import run_tiny

from gfsim.experiments import most_datasets

CFG = most_datasets.SETTINGS["tiny"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_tiny("most_datasets", tmp_path_factory)


def _keys():
    return [(d, w) for d in CFG["dims"] for w in CFG["widths"]]


def test_saved_data_is_consistent(result):
    r, data, out = result
    assert os.path.getsize(os.path.join(out, r.figures[0])) > 0
    D, S = CFG["datasets"], CFG["seeds"]
    for d, w in _keys():
        p = f"d{d}-w{w}/"
        X = data[p + "X"]  # (D, 2, d): unit points
        np.testing.assert_allclose(np.linalg.norm(X, axis=-1), 1.0, atol=1e-12)
        # Angles recomputed from the points; grid is dataset-major (run = dataset * S + seed).
        ang = np.arccos(np.clip(np.sum(X[:, 0] * X[:, 1], -1), -1, 1))
        np.testing.assert_allclose(data[p + "angle"].reshape(D, S), np.repeat(ang[:, None], S, 1),
                                   atol=1e-9)
        loss, status = data[p + "loss"], data[p + "status"]
        np.testing.assert_array_equal(data[p + "converged"], loss < most_datasets.CONVERGED)
        np.testing.assert_array_equal(data[p + "stalled"], status == 2)
        # Stalled runs used the whole step budget and stopped before t1; the others reached t1.
        st = data[p + "stalled"]
        assert np.all(data[p + "steps"][st] == CFG["max_steps"])
        assert np.all(data[p + "t_final"][st] < CFG["t1"])
        np.testing.assert_allclose(data[p + "t_final"][~st], CFG["t1"])
        # Disk init: rows of W1 in the ball of radius 1e-4.
        assert np.all(np.linalg.norm(data[p + "W1_0"], axis=-1) <= 1e-4 * (1 + 1e-12))
        # Stable rank recomputed from the final W1; in [1, 2] for converged runs (rank <= 2).
        s = np.linalg.svd(data[p + "final_W1"], compute_uv=False)
        sr = np.sum(s**2, -1) / s[:, 0] ** 2
        np.testing.assert_allclose(data[p + "stable_rank"], sr, rtol=1e-9)
        c = data[p + "converged"]
        assert np.all((sr[c] >= 1 - 1e-9) & (sr[c] <= 2 + 1e-9))
        # Per-dataset "far from rank 1" flags, recomputed.
        cd, srd = c.reshape(D, S), sr.reshape(D, S)
        far = cd.any(1) & np.all(~cd | (srd >= most_datasets.FAR), 1)
        np.testing.assert_array_equal(data[p + "dataset_far"], far)
        some = np.any(cd & (srd >= most_datasets.FAR), 1)
        np.testing.assert_array_equal(data[p + "dataset_some_far"], some)
        assert np.all(far <= some)


def test_split_starts_on_obtuse_pairs_hit_the_analytic_value(result):
    r, data, _ = result
    n = 0
    for d, w in _keys():
        if w != 2:
            continue
        p = f"d{d}-w{w}/"
        X = np.repeat(data[p + "X"], CFG["seeds"], axis=0)  # per run
        pre = np.einsum("rhd,rnd->rhn", data[p + "W1_0"], X)
        o1 = (pre[..., 0] > 0) & (pre[..., 1] <= 0)
        o2 = (pre[..., 1] > 0) & (pre[..., 0] <= 0)
        split = (o1[:, 0] & o2[:, 1]) | (o2[:, 0] & o1[:, 1])
        np.testing.assert_array_equal(data[p + "split_start"], split)
        cos = np.sum(X[:, 0] * X[:, 1], -1)
        sel = split & (cos < 0)
        n += int(sel.sum())
        # Every such run converges, with rows along x1 and x2: sr = 2/(1+|cos|).
        assert np.all(data[p + "converged"][sel])
        np.testing.assert_allclose(data[p + "stable_rank"][sel], 2 / (1 + np.abs(cos[sel])),
                                   atol=1e-3)
        rows = data[p + "final_W1"][sel]
        u = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
        best = np.max(np.abs(np.einsum("rhd,rnd->rhn", u, X[sel])), -1)
        assert np.all(best > 0.999)
    assert n > 0  # the fixed key gives split starts on obtuse pairs
    analytic = [c for c in r.claims if c.claim.startswith("Analytic")]
    assert analytic and analytic[0].verdict == "agrees"
    assert f"{n} of {n} such runs converged" in analytic[0].measured


def test_claim_rows_count_stalls_and_apply_the_rule(result):
    r, data, _ = result
    rows = [c for c in r.claims if c.claim.startswith("Claim 2")]
    assert len(rows) == len(CFG["widths"])
    top, low = max(CFG["dims"]), min(CFG["dims"])
    D, S = CFG["datasets"], CFG["seeds"]
    for w, c in zip(CFG["widths"], rows):
        share, n_has = {}, {}
        for d in CFG["dims"]:
            p = f"d{d}-w{w}/"
            st, conv = data[p + "stalled"], data[p + "converged"]
            # Sliding along a kink happens on acute pairs (an x1-only neuron moving along x1
            # reaches w.x2 = 0 only if cos(x1, x2) > 0); stalls, if any, are counted.
            assert np.all(data[p + "angle"][data[p + "slides"] > 0] < math.pi / 2)
            has = conv.reshape(D, S).any(1)
            n_has[d] = int(has.sum())
            share[d] = data[p + "dataset_some_far"][has].mean()
            assert f"d = {d}: {share[d]:.2f} of the {n_has[d]} datasets" in c.measured
            assert f"stalled (max_steps) {int(st.sum())}" in c.measured
            assert f"not converged {int((~conv).sum())} of {D * S}" in c.measured
        expected = ("inconclusive" if n_has[top] < most_datasets.MIN_DATASETS
                    else "agrees" if share[top] > 0.5 and share[top] >= share[low]
                    else "disagrees")
        assert c.verdict == expected
