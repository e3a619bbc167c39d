"""gfsim.save / gfsim.load / Trajectory.to_xarray: a labelled Dataset of one simulate call,
checked against the trajectory itself and numpy's SVD; atomic writes; no code from a store."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import xarray as xr

import gfsim
from gfsim import store


@pytest.fixture(scope="module")
def traj():
    # the tiny batch the sweep tests solve too (6 runs of widths (2, 3, 1)): one compile for all
    net = gfsim.MLP((2, 3, 1), "linear", key=jax.random.key(0), scale=0.5, runs=6)
    data = gfsim.data.sphere(jax.random.key(1), 4, 2)
    return gfsim.simulate(net, data, 1.0, num_saves=8)


def test_to_xarray_matches_the_trajectory(traj):
    ds = traj.to_xarray(seed=[3, 4, 5, 6, 7, 8], depth=2, label="a")
    assert dict(ds.sizes) == {"run": 6, "time": 8, "layer": 2, "sv": 2}
    np.testing.assert_array_equal(ds["loss_curve"].values, np.asarray(traj.loss))
    np.testing.assert_array_equal(ds["t"].values[1], np.asarray(traj.ts))
    np.testing.assert_array_equal(ds["final_loss"].values, np.asarray(traj.final_loss))
    for j, w in enumerate(traj.weights):
        ref = np.linalg.svd(np.asarray(w), compute_uv=False)  # (run, time, k)
        k = ref.shape[-1]
        np.testing.assert_allclose(ds["singular_values"].values[:, :, j, :k], ref, rtol=1e-12)
        assert np.all(np.isnan(ds["singular_values"].values[:, :, j, k:]))
    assert list(ds["status"].values) == list(traj.status_labels())
    assert ds.attrs["reduction"] == "mean" and ds.attrs["loss"] == "square"
    assert "2t/(n*d_out)" in ds.attrs["time_convention"]
    # the run coordinates index the runs
    assert ds.sel(seed=4)["final_loss"].item() == float(traj.final_loss[1])
    assert ds.sel(run_id=0)["seed"].item() == 3


def test_single_run_gets_a_run_axis(traj):
    ds = store.to_xarray(traj[1])
    assert ds.sizes["run"] == 1
    np.testing.assert_array_equal(ds["loss_curve"].values[0], np.asarray(traj.loss[1]))


def test_save_load_round_trip(traj, tmp_path):
    path = tmp_path / "one"
    seeds = [3, 4, 5, 6, 7, 8]
    gfsim.save(traj, path, save_weights=True, seed=seeds, atol=None)
    ds = gfsim.load(path)
    ref = traj.to_xarray(save_weights=True, seed=seeds, atol=None)
    xr.testing.assert_identical(store.flat(ds), store.flat(ref))
    assert np.all(np.isnan(ds["atol"].values))
    for j, w in enumerate(traj.weights):
        o, i = w.shape[-2:]
        np.testing.assert_array_equal(ds["weights"].values[:, :, j, :o, :i], np.asarray(w))
    with pytest.raises(ValueError, match="already exists"):
        gfsim.save(traj, path)
    assert sorted(os.listdir(tmp_path)) == ["one"]  # nothing left beside it


def test_interrupted_write_leaves_nothing(traj, tmp_path, monkeypatch):
    ds = traj.to_xarray()
    real = xr.Dataset.to_zarr

    def dies(self, path, **kw):
        real(self, path, **kw)
        raise KeyboardInterrupt  # killed after the data, before the rename

    monkeypatch.setattr(xr.Dataset, "to_zarr", dies)
    with pytest.raises(KeyboardInterrupt):
        store.write_atomic(ds, tmp_path / "x")
    assert os.listdir(tmp_path) == []


def test_load_reads_no_code(tmp_path):
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (bad / "a" / ".zarray").write_text(json.dumps(
        {"zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "|O", "compressor": None,
         "fill_value": None, "filters": [{"id": "pickle"}], "order": "C"}))
    with pytest.raises(ValueError, match="pickle"):
        gfsim.load(bad)
    with pytest.raises(ValueError, match="not a gfsim store"):
        gfsim.load(tmp_path)
    with pytest.raises(ValueError, match="no such directory"):
        gfsim.load(tmp_path / "nope")
