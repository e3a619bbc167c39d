"""Resume: a sweep killed with SIGKILL mid-sweep (a real subprocess) and resumed gives exactly
the store of an uninterrupted sweep; a store of another spec, or an existing store without
--resume, is a clear error."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import xarray as xr
from click.testing import CliRunner

import gfsim
from gfsim.cli import main
from gfsim.sweep import load_spec, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# four batches of 6 runs, one compiled program (t1 is traced; the tiny batch of the other tests);
# batches are committed one after another by the writer thread, each write a few tenths of a
# second, so the sweep is still running when its first commit is seen
SPEC = """
name = "resume"
dataset = "sphere"
n = 4
dim = 2
depth = 2
width = 3
activation = "linear"
num_saves = 8
seeds = 6
[grid]
t1 = [1.0, 2.0, 3.0, 4.0]
"""

TIMING = ("batch_wall_time", "batch_solve_time", "lockstep_waste")


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [e.get("PYTHONPATH")] if p])
    return e


def start_sweep_after_reference(tmp_path, spec_text, out_name, stdout=subprocess.DEVNULL):
    """Write the spec, run it in this process into ``ref`` (which also warms the compilation
    cache for the subprocess), start the same sweep as a real subprocess into ``out_name`` and
    wait until it has committed its first batch. Returns (spec file, spec, ref, out, process)."""
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(spec_text)
    spec = load_spec(spec_file)
    ref = tmp_path / "ref"
    sweep(spec, ref, progress=False)
    out = tmp_path / out_name
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfsim.cli", "sweep", str(spec_file), "--out", str(out),
         "--no-progress"], env=env(), stdout=stdout, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not glob.glob(str(out / "batches" / "*.zarr")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no batch committed in 120 s"
            time.sleep(0.002)
    except BaseException:
        proc.kill()
        raise
    return spec_file, spec, ref, out, proc


def assert_same_store(a, b):
    a, b = gfsim.store.flat(gfsim.load(a)), gfsim.store.flat(gfsim.load(b))
    np.testing.assert_array_equal(a["run_id"].values, b["run_id"].values)
    xr.testing.assert_allclose(a.drop_vars(TIMING), b.drop_vars(TIMING), rtol=1e-12, atol=0)
    xr.testing.assert_identical(a.drop_vars(list(a.data_vars)), b.drop_vars(list(b.data_vars)))


def test_kill_9_then_resume_equals_uninterrupted(tmp_path):
    spec_file, spec, ref, killed, proc = start_sweep_after_reference(tmp_path, SPEC, "killed")
    try:
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = gfsim.load(killed)
    assert 1 <= partial.sizes["run"] < spec.num_runs  # killed mid-sweep, some batches committed

    r = CliRunner().invoke(main, ["sweep", str(spec_file), "--out", str(killed), "--resume",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert_same_store(killed, ref)
    assert not glob.glob(str(killed / "batches" / ".tmp-*"))

    # resuming a finished store does nothing and changes nothing
    r = CliRunner().invoke(main, ["sweep", str(spec_file), "--out", str(killed), "--resume",
                                  "--no-progress"])
    assert r.exit_code == 0 and f"{spec.num_runs} / {spec.num_runs} runs" in r.output
    assert_same_store(killed, ref)


def test_resume_checks_the_spec(tmp_path):
    a = tmp_path / "a.toml"
    a.write_text(SPEC.replace("[1.0, 2.0, 3.0, 4.0]", "[1.0, 2.0]"))
    out = tmp_path / "store"
    r = CliRunner().invoke(main, ["sweep", str(a), "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    before = sorted(os.listdir(out / "batches"))

    r = CliRunner().invoke(main, ["sweep", str(a), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2
    assert "already exists; allowed: a new path, or --resume" in r.stderr

    b = tmp_path / "b.toml"
    b.write_text(SPEC.replace("[1.0, 2.0, 3.0, 4.0]", "[1.0, 3.0]"))
    r = CliRunner().invoke(main, ["sweep", str(b), "--out", str(out), "--resume"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "was written by a different spec" in r.stderr
    assert sorted(os.listdir(out / "batches")) == before
