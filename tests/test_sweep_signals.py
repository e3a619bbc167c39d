"""SIGINT/SIGTERM during a sweep (a real subprocess): it stops at a batch boundary, says so,
exits with 128 + the signal, leaves only whole batches, and --resume completes it to exactly
the store of an uninterrupted sweep."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
import time

from click.testing import CliRunner
from test_sweep_resume import SPEC, assert_same_store, env

import gfsim
from gfsim.cli import main
from gfsim.sweep import load_spec, sweep

# eight batches of the resume test's tiny batch (one compiled program)
SPEC8 = SPEC.replace("[1.0, 2.0, 3.0, 4.0]", "[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]")


def test_sigterm_stops_at_a_batch_boundary_then_resumes(tmp_path):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(SPEC8)
    spec = load_spec(spec_file)
    ref = tmp_path / "ref"
    sweep(spec, ref, progress=False)  # also warms the compilation cache for the subprocess

    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gfsim.cli", "sweep", str(spec_file), "--out", str(out),
         "--no-progress"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(str(out / "batches" / "*.zarr")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no batch committed in 120 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    err = err.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "resume with --resume" in err
    assert not glob.glob(str(out / "batches" / ".tmp-*"))
    partial = gfsim.load(out)
    assert 6 <= partial.sizes["run"] < spec.num_runs and partial.sizes["run"] % 6 == 0

    r = CliRunner().invoke(main, ["sweep", str(spec_file), "--out", str(out), "--resume",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert_same_store(out, ref)
