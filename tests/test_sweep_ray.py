"""The Ray backend against a real Ray head on 127.0.0.1 (separate processes, not local mode):
batches run as Ray tasks that write their own batches of the store; the store equals the local
backend's. A retried task writes nothing twice."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import xarray as xr

import gfsim
from gfsim.sweep import parse_spec, sweep
from gfsim.sweep._execute import run_batch_task

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'gfsim[ray]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# two batches (two t1 values: one compiled shape, the tiny batch of the other tests), 6 runs each
RAW = {"name": "ray", "dataset": "sphere", "n": 4, "dim": 2, "depth": 2, "width": 3,
       "activation": "linear", "num_saves": 8, "seeds": 6, "grid": {"t1": [1.0, 2.0]}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head of our own. ``ray start --block`` keeps the head's processes under one process
    we started, in a session of its own; stopping that process (by its id) stops the head and
    nothing else (``ray stop`` would stop every Ray on the machine)."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    env["JAX_PLATFORMS"] = "cpu"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(ray_bin):
        ray_bin = shutil.which("ray")
        if ray_bin is None:
            pytest.skip("ray is importable but its `ray` command is not on PATH")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", "--block",
         f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the Ray head did not start in 90 s"
            time.sleep(0.5)
    try:
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.terminate()  # ray start --block stops the processes it started, then exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:  # anything of that session still alive (by its id: only what we started)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_backend_equals_local(ray_head, tmp_path):
    spec = parse_spec(RAW)
    via_ray = tmp_path / "ray"
    summary = sweep(spec, via_ray, backend="ray", address=ray_head, progress=False)
    assert summary["batch_errors"] == {} and summary["runs_done"] == spec.num_runs
    local = tmp_path / "local"
    sweep(spec, local, progress=False)
    timing = ["batch_wall_time", "batch_solve_time", "lockstep_waste"]
    a = gfsim.store.flat(gfsim.load(via_ray)).drop_vars(timing)
    b = gfsim.store.flat(gfsim.load(local)).drop_vars(timing)
    np.testing.assert_array_equal(a["run_id"].values, np.arange(spec.num_runs))
    xr.testing.assert_allclose(a, b, rtol=1e-12, atol=0)

    # a retried task (same batch again) finds it committed and writes nothing
    before = {f: os.stat(os.path.join(via_ray, "batches", f)).st_mtime_ns
              for f in os.listdir(via_ray / "batches")}
    runs = spec.runs()
    res = run_batch_task(str(via_ray), "b00000", runs[:6], list(range(6)), False, 6)
    assert res["skipped"]
    after = {f: os.stat(os.path.join(via_ray, "batches", f)).st_mtime_ns
             for f in os.listdir(via_ray / "batches")}
    assert after == before
