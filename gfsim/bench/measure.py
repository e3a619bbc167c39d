"""Measurements shared by every benchmark: wall time, memory, accuracy against a reference,
and the first-order extrapolation of gradient descent."""

from __future__ import annotations

import importlib
import math
import os
import platform
import statistics
import time

import jax
import numpy as np

THRESH = 1e-3  # a run whose error exceeds this counts as inaccurate
TARGETS = (1e-4, 1e-6)  # accuracies at which time-to-accuracy is reported
FIRST_ORDER = (0.8, 1.25)  # log-log slopes of GD error vs lr accepted as first order


def median_time(fn, repeats, budget_s=None):
    """Median wall time of ``repeats`` calls (each blocked until ready), and all of them. With
    ``budget_s``, stop repeating once the calls so far took that long (at least one call)."""
    out = []
    for _ in range(max(int(repeats), 1)):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
        if budget_s is not None and sum(out) >= budget_s:
            break
    return statistics.median(out), out


def first_call(fn):
    """(result, seconds) of one call blocked until ready: compile + run on a first call."""
    t = time.perf_counter()
    r = jax.block_until_ready(fn())
    return r, time.perf_counter() - t


def machine() -> dict:
    """The machine the figures were measured on."""
    dev = jax.devices()[0]
    return dict(platform=platform.platform(), processor=platform.processor() or None,
                machine=platform.machine(), cpus=os.cpu_count(), device=dev.device_kind,
                backend=jax.default_backend(), jax=jax.__version__)


def bench_extra() -> dict:
    """Which of the ``bench`` extra's packages (scipy, torch) are importable, with versions.
    Imported here only: gfsim itself never imports them."""
    out = {}
    for name in ("scipy", "torch"):
        try:
            mod = importlib.import_module(name)
            out[name] = getattr(mod, "__version__", "unknown")
        except Exception as e:  # noqa: BLE001
            out[name] = None
            out[f"{name}_error"] = f"{type(e).__name__}: {e} (pip install 'gfsim[bench]')"
    return out


def compiled_memory(fn, *args) -> dict:
    """Memory of the XLA program of ``jax.jit(fn)(*args)``, from the compiled executable's
    ``memory_analysis()``: argument + output + temporary buffers (bytes). This is the device
    memory the program needs, not the process's; it costs one extra compile."""
    try:
        ma = jax.jit(fn).lower(*args).compile().memory_analysis()
    except Exception as e:  # noqa: BLE001
        return dict(error=f"{type(e).__name__}: {e}")
    if ma is None:
        return dict(error="memory_analysis() not available on this backend")
    parts = dict(argument_bytes=int(ma.argument_size_in_bytes),
                 output_bytes=int(ma.output_size_in_bytes),
                 temp_bytes=int(ma.temp_size_in_bytes))
    parts["peak_bytes"] = sum(parts.values())
    parts["source"] = "XLA memory_analysis: argument + output + temp"
    return parts


def max_rss_bytes() -> int | None:
    """The process's peak resident set size so far (monotone over a run)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)


def json_safe(x):
    """Non-finite floats as the strings "inf" / "nan" (strict JSON has no such numbers)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)) and not np.isfinite(x):
        return str(float(x))
    return x


# ---------------------------------------------------------------------------------------------
# flat parameters and accuracy


def flat_theta(weights) -> np.ndarray:
    """(runs, T, P) from per-layer saved weights (runs, T, out, in): W1 row-major, then W2..."""
    runs, T = weights[0].shape[:2]
    return np.concatenate([np.asarray(w).reshape(runs, T, -1) for w in weights], axis=-1)


def flat_init(weights) -> np.ndarray:
    """(runs, P) parameters from per-layer weights (runs, out, in), layout of :func:`flat_theta`."""
    runs = weights[0].shape[0]
    return np.concatenate([np.asarray(w).reshape(runs, -1) for w in weights], axis=-1)


def unflatten(theta, widths) -> tuple:
    """Per-layer weights (..., out, in) from flat parameters (..., P)."""
    out, i = [], 0
    for fi, fo in zip(widths[:-1], widths[1:]):
        out.append(theta[..., i:i + fi * fo].reshape(*theta.shape[:-1], fo, fi))
        i += fi * fo
    return tuple(out)


def run_errors(theta: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per run: max over save times of ||theta - ref|| / ||ref||  (theta, ref: (runs, T, P)).
    A run that did not reach a save time (NaN) has error inf."""
    rel = np.linalg.norm(theta - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    rel = np.where(np.isfinite(rel), rel, np.inf)
    return rel.max(axis=-1)


def accuracy(theta, ref) -> dict:
    """Median over runs of the error of :func:`run_errors`, the fraction of runs above 1e-3 and
    the worst run."""
    e = run_errors(np.asarray(theta), np.asarray(ref))
    return dict(accuracy=float(np.median(e)), frac_above_1e3=float(np.mean(e > THRESH)),
                max_error=float(np.max(e)))


def fit_first_order(rows, t1, targets=TARGETS):
    """Fit accuracy = C * lr to GD rows (least squares in log space with slope 1) and extrapolate
    the lr, steps and time (proportional to steps, at the measured cost per step of the smallest
    lr) needed for each target accuracy. Also returns the free log-log slope as a check that the
    error is first order in lr."""
    lr = np.array([r["lr"] for r in rows])
    err = np.array([r["accuracy"] for r in rows])
    ok = np.isfinite(err) & (err > 0) & (err < 1)
    if ok.sum() == 0:
        return None
    C = math.exp(float(np.mean(np.log(err[ok]) - np.log(lr[ok]))))
    slope = float(np.polyfit(np.log(lr[ok]), np.log(err[ok]), 1)[0]) if ok.sum() >= 2 else None
    per_step = min(rows, key=lambda r: r["lr"])["s_per_step"]
    out = dict(C=C, loglog_slope=slope, s_per_step=per_step, points_used=int(ok.sum()),
               extrapolated={})
    if slope is None or not FIRST_ORDER[0] <= slope <= FIRST_ORDER[1]:
        # The error does not shrink like lr (e.g. GD chattering across a kink): no
        # extrapolation.
        out["not_first_order"] = True
        return out
    for a in targets:
        lr_a = a / C
        steps = t1 / lr_a
        out["extrapolated"][f"{a:g}"] = dict(lr=lr_a, steps=steps, time_s=steps * per_step)
    return out
