"""Fake experiments for the interruption tests of ``gfsim reproduce``: each one notes its start
and end in ``OUT/fake-log.txt``, sleeps ``GFSIM_FAKE_SECONDS`` (no JAX: the tests are about
signals, stores and the report, and must take seconds) and returns a small store.

Imported by the subprocess that runs ``gfsim reproduce``; the worker processes import it too
(``gfsim.reproduce`` imports every module that registered an experiment)."""

from __future__ import annotations

import os
import time

import numpy as np

from gfsim.experiments import EXPERIMENTS, Claim, Result, register_experiment, store_name

NAMES = ("fake_a", "fake_b", "fake_c", "fake_d")


def _log(out, text):
    with open(os.path.join(out, "fake-log.txt"), "a") as f:
        f.write(text + "\n")


def _fake(name, profile, out, progress):
    import xarray as xr

    _log(out, f"start {name}")
    time.sleep(float(os.environ.get("GFSIM_FAKE_SECONDS", "0")))
    ds = xr.Dataset({"final_loss": ("run", np.arange(3.0) + NAMES.index(name))},
                    coords={"run_id": ("run", np.arange(3)), "seed": ("run", np.arange(3))})
    _log(out, f"end {name}")
    return Result(name=name, title=f"Fake {name}",
                  claims=[Claim(f"{name} holds", "fake", f"{name} measured", "agrees")],
                  figures=[], data_file=store_name(name), settings={"profile": profile},
                  data=ds)


def fake_a(profile, out, progress=None):
    return _fake("fake_a", profile, out, progress)


def fake_b(profile, out, progress=None):
    return _fake("fake_b", profile, out, progress)


def fake_c(profile, out, progress=None):
    return _fake("fake_c", profile, out, progress)


def fake_d(profile, out, progress=None):
    return _fake("fake_d", profile, out, progress)


for _name in NAMES:
    if _name not in EXPERIMENTS:
        register_experiment(_name)(globals()[_name])
