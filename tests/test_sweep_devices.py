"""Several devices: the run axis of a batch is sharded over jax.devices(). On the CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (a subprocess: the flag must precede JAX's
start) the store equals the one written here on a single device."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import xarray as xr

import gfsim
from gfsim.sweep import parse_spec, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 6 runs in one batch: padded to 8 for 4 devices
RAW = {"name": "devices", "dataset": "sphere", "n": 4, "dim": 2, "depth": 2, "width": 3,
       "activation": "linear", "t1": 1.0, "num_saves": 8, "seeds": 3,
       "grid": {"init_scale": [0.5, 1.0]}}

SCRIPT = """
import sys, jax, gfsim
from gfsim.sweep import parse_spec, sweep, plan
from gfsim.sweep._runs import batch_inputs, shard_runs
assert len(jax.devices()) == 4, jax.devices()
spec = parse_spec(%r)
cfgs = spec.runs()
net, data, padded = shard_runs(*batch_inputs(cfgs))
w = net.weights[0]
print("padded", padded, "shards", len(w.sharding.device_set), len(w.addressable_shards))
traj = gfsim.simulate(net, data, 1.0, num_saves=8)  # the sweep's own program (same shape)
print("solved on", len(traj.loss.sharding.device_set))
sweep(spec, sys.argv[1], progress=False)
"""


def test_sharded_equals_single_device(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["JAX_PLATFORMS"] = "cpu"
    out4 = tmp_path / "four"
    r = subprocess.run([sys.executable, "-c", SCRIPT % (RAW,), str(out4)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "padded 8 shards 4 4" in r.stdout and "solved on 4" in r.stdout

    assert len(jax.devices()) == 1
    out1 = tmp_path / "one"
    sweep(parse_spec(RAW), out1, progress=False)
    # timings differ, and the lockstep waste counts the padding runs
    timing = ["batch_wall_time", "batch_solve_time", "lockstep_waste"]
    a = gfsim.store.flat(gfsim.load(out4)).drop_vars(timing)
    b = gfsim.store.flat(gfsim.load(out1)).drop_vars(timing)
    assert a.sizes["run"] == 6
    np.testing.assert_array_equal(a["num_steps"].values, b["num_steps"].values)
    xr.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
