"""Experiment "most_datasets": random size-2 datasets, final stable rank of W1 vs the angle."""

import math
import os

import numpy as np
import pytest
from helpers import run_tiny, runs

from gfsim.experiments import most_datasets

CFG = most_datasets.SETTINGS["tiny"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return run_tiny("most_datasets", tmp_path_factory)


def _keys():
    return [(d, w) for d in CFG["dims"] for w in CFG["widths"]]


def _runs(ds, d, w):
    r = runs(ds, dim=d, width=w)
    # trim the padding of the smaller dims (d_in and the hidden width differ between settings)
    return r.isel(**{"in": slice(0, d), "row": slice(0, w), "col": slice(0, d)})


def test_saved_data_is_consistent(result):
    r, ds, out = result
    assert os.path.getsize(os.path.join(out, r.figures[0])) > 0
    D, S = CFG["datasets"], CFG["seeds"]
    assert ds.sizes["run"] == D * S * len(_keys())
    for d, w in _keys():
        g = _runs(ds, d, w)
        X = g["X"].values  # (runs, 2, d): unit points
        np.testing.assert_allclose(np.linalg.norm(X, axis=-1), 1.0, atol=1e-12)
        # Angles recomputed from the points; grid is dataset-major (run = dataset * S + seed).
        np.testing.assert_array_equal(g["pair"].values, np.repeat(np.arange(D), S))
        np.testing.assert_array_equal(g["seed"].values, np.tile(np.arange(S), D))
        np.testing.assert_array_equal(X.reshape(D, S, 2, d), np.repeat(X.reshape(D, S, 2, d)[
            :, :1], S, 1))  # every seed of a pair sees the same pair
        ang = np.arccos(np.clip(np.sum(X[:, 0] * X[:, 1], -1), -1, 1))
        np.testing.assert_allclose(g["angle"].values, ang, atol=1e-9)
        loss, status = g["final_loss"].values, g["status_code"].values
        np.testing.assert_array_equal(g["converged"].values, loss < most_datasets.CONVERGED)
        np.testing.assert_array_equal(g["stalled"].values, status == 2)
        # Stalled runs used the whole step budget and stopped before t1; the others reached t1.
        st = g["stalled"].values
        assert np.all(g["num_steps"].values[st] == CFG["max_steps"])
        assert np.all(g["t_final"].values[st] < CFG["t1"])
        np.testing.assert_allclose(g["t_final"].values[~st], CFG["t1"])
        # Disk init: rows of W1 in the ball of radius 1e-4.
        W1_0 = g["initial_weights"].values[:, 0]
        assert np.all(np.linalg.norm(W1_0, axis=-1) <= 1e-4 * (1 + 1e-12))
        # Stable rank recomputed from the final W1; in [1, 2] for converged runs (rank <= 2).
        s = np.linalg.svd(g["final_weights"].values[:, 0], compute_uv=False)
        sr = np.sum(s**2, -1) / s[:, 0] ** 2
        np.testing.assert_allclose(g["stable_rank_W1"].values, sr, rtol=1e-9)
        c = g["converged"].values
        assert np.all((sr[c] >= 1 - 1e-9) & (sr[c] <= 2 + 1e-9))
        # Per-dataset "far from rank 1" flags, recomputed (each run carries its pair's flag).
        cd, srd = c.reshape(D, S), sr.reshape(D, S)
        far = cd.any(1) & np.all(~cd | (srd >= most_datasets.FAR), 1)
        np.testing.assert_array_equal(g["dataset_far"].values, np.repeat(far, S))
        some = np.any(cd & (srd >= most_datasets.FAR), 1)
        np.testing.assert_array_equal(g["dataset_some_far"].values, np.repeat(some, S))
        assert np.all(far <= some)


def test_split_starts_on_obtuse_pairs_hit_the_analytic_value(result):
    r, ds, _ = result
    n = 0
    for d, w in _keys():
        if w != 2:
            continue
        g = _runs(ds, d, w)
        X = g["X"].values  # per run
        pre = np.einsum("rhd,rnd->rhn", g["initial_weights"].values[:, 0], X)
        o1 = (pre[..., 0] > 0) & (pre[..., 1] <= 0)
        o2 = (pre[..., 1] > 0) & (pre[..., 0] <= 0)
        split = (o1[:, 0] & o2[:, 1]) | (o2[:, 0] & o1[:, 1])
        np.testing.assert_array_equal(g["split_start"].values, split)
        cos = np.sum(X[:, 0] * X[:, 1], -1)
        sel = split & (cos < 0)
        n += int(sel.sum())
        # Every such run converges, with rows along x1 and x2: sr = 2/(1+|cos|).
        assert np.all(g["converged"].values[sel])
        np.testing.assert_allclose(g["stable_rank_W1"].values[sel], 2 / (1 + np.abs(cos[sel])),
                                   atol=1e-3)
        rows = g["final_weights"].values[:, 0][sel]
        u = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
        best = np.max(np.abs(np.einsum("rhd,rnd->rhn", u, X[sel])), -1)
        assert np.all(best > 0.999)
    assert n > 0  # the fixed key gives split starts on obtuse pairs
    analytic = [c for c in r.claims if c.claim.startswith("Analytic")]
    assert analytic and analytic[0].verdict == "agrees"
    assert f"{n} of {n} such runs converged" in analytic[0].measured


def test_claim_rows_count_stalls_and_apply_the_rule(result):
    r, ds, _ = result
    rows = [c for c in r.claims if c.claim.startswith("Claim 2")]
    assert len(rows) == len(CFG["widths"])
    top, low = max(CFG["dims"]), min(CFG["dims"])
    D, S = CFG["datasets"], CFG["seeds"]
    for w, c in zip(CFG["widths"], rows):
        share, n_has = {}, {}
        for d in CFG["dims"]:
            g = _runs(ds, d, w)
            st, conv = g["stalled"].values, g["converged"].values
            # Sliding along a kink happens on acute pairs (an x1-only neuron moving along x1
            # reaches w.x2 = 0 only if cos(x1, x2) > 0); stalls, if any, are counted.
            assert np.all(g["angle"].values[g["num_slides"].values > 0] < math.pi / 2)
            has = conv.reshape(D, S).any(1)
            n_has[d] = int(has.sum())
            share[d] = g["dataset_some_far"].values[::S][has].mean()
            assert f"d = {d}: {share[d]:.2f} of the {n_has[d]} datasets" in c.measured
            assert f"stalled (max_steps) {int(st.sum())}" in c.measured
            assert f"not converged {int((~conv).sum())} of {D * S}" in c.measured
        expected = ("inconclusive" if n_has[top] < most_datasets.MIN_DATASETS
                    else "agrees" if share[top] > 0.5 and share[top] >= share[low]
                    else "disagrees")
        assert c.verdict == expected
