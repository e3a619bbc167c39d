"""The benchmark suite: every method on every problem of the chosen workloads, side by side in
one process; writes ``bench.json`` (every figure), ``bench.md`` (the tables) and one
accuracy-vs-cost plot per workload (``accuracy_W-A.png``, ...)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from . import methods as M
from .measure import TARGETS, bench_extra, fit_first_order, json_safe, machine, max_rss_bytes
from .problem import Problem
from .workloads import PROFILES, WORKLOADS, split_sliding

FAMILIES = ("gfsim", "gfsim plain", "hand_diffrax", "gd_jax", "torch", "scipy")


def resolve_workloads(only) -> list[str]:
    """Workload names from ``--only`` values (case-insensitive, ``W-A`` or ``A``); all when
    empty. Raises ValueError naming the option and the allowed values."""
    if not only:
        return list(WORKLOADS)
    by_key = {}
    for name in WORKLOADS:
        by_key[name.lower()] = name
        by_key[name.split("-")[-1].lower()] = name
    out = []
    for o in only:
        name = by_key.get(str(o).strip().lower())
        if name is None:
            raise ValueError(f"--only {o!r} is not a workload; allowed: "
                             f"{', '.join(WORKLOADS)}.")
        if name not in out:
            out.append(name)
    return out


def check_out_dir(out: str) -> str:
    """Create ``out`` if needed and check it is writable; ValueError otherwise."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".gfsim-bench-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {out!r} is not a writable directory "
                         f"({e.strerror or type(e).__name__}); allowed: a directory you can "
                         "write to.") from None
    return out


def check_options(*, profile="quick", only=(), out=None, repeats=1) -> list[str]:
    """Validate the suite's options in plain Python, before anything compiles."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}; allowed: {', '.join(PROFILES)}.")
    if not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"--repeats {repeats!r} must be an integer >= 1.")
    names = resolve_workloads(only)
    if out is not None:
        check_out_dir(out)
    return names


# ---------------------------------------------------------------------------------------------


def _cheapest(rows, target):
    ok = [r for r in rows if r.get("accuracy") is not None and r["accuracy"] <= target]
    return min(ok, key=lambda r: r["steady_s"]) if ok else None


def headline(res) -> dict:
    """Time to each target accuracy per method, and its ratio to gfsim's. A method reaches a
    target with its cheapest measured setting at least as accurate; GD (JAX and PyTorch) is
    extrapolated from the first-order fit when no measured lr reaches it."""
    rows = res["rows"]
    fams = {}
    for r in rows:
        fams.setdefault(r["family"], []).append(r)
    fit = res.get("gd_fit")
    out = {}
    for a in TARGETS:
        key = f"{a:g}"
        g = _cheapest(fams.get("gfsim", []), a)
        h = {"gfsim": dict(knob=g["knob"], time_s=g["steady_s"], extrapolated=False)
             if g else None}
        for fam, frows in fams.items():
            if fam == "gfsim":
                continue
            b = _cheapest(frows, a)
            if b is not None:
                h[fam] = dict(knob=b["knob"], time_s=b["steady_s"], extrapolated=False,
                              scaled=b.get("scaled"))
            elif fam in ("gd_jax", "torch") and fit and fit["extrapolated"]:
                e = fit["extrapolated"][key]
                per = min(frows, key=lambda r: r["lr"])["s_per_step"]
                h[fam] = dict(knob=f"lr={e['lr']:.3g}", time_s=e["steps"] * per,
                              extrapolated=True, steps=e["steps"])
            else:
                h[fam] = None
        for fam, v in h.items():
            if fam != "gfsim" and v is not None:
                v["ratio"] = v["time_s"] / g["steady_s"] if g else None
        out[key] = h
    return out


def run_problem(p: Problem, repeats: int, *, ref=None, skip=(), progress=None) -> dict:
    """Every method on one problem. ``ref``: a precomputed (theta_ref, info)."""
    def say(msg):
        if progress is not None:
            progress(f"{p.name}: {msg}")

    t0 = time.perf_counter()
    if ref is None:
        say("reference (dopri8, rtol 1e-12)")
        ref = M.reference(p)
    theta_ref, ref_info = ref
    res = dict(name=p.name, workload=p.workload, description=p.description, runs=p.runs,
               t1=p.t1, ts=[float(t) for t in p.ts], loss=p.loss, reduction=p.reduction,
               repeats=repeats, reference=ref_info, rows=[])
    say("gfsim")
    res["rows"] += M.bench_gfsim(p, theta_ref, repeats)
    if "hand_diffrax" not in skip:
        say("hand-written diffrax")
        res["rows"] += M.bench_hand_diffrax(p, theta_ref, repeats)
    say("JAX GD")
    gd_rows = M.bench_gd(p, theta_ref, repeats)
    res["rows"] += gd_rows
    res["gd_fit"] = fit_first_order(gd_rows, p.t1)
    for name, fn in (("torch", lambda: M.bench_torch(p, theta_ref)),
                     ("scipy", lambda: M.bench_scipy(p, theta_ref))):
        if name in skip:
            continue
        say(name)
        out = fn()
        if isinstance(out, dict):
            res.setdefault("skipped", {})[name] = out["skipped"]
        else:
            res["rows"] += out
    say("bare gradient")
    g = M.bare_gradient_time(p)
    res["bare_batched_gradient_s"] = g
    for r in res["rows"]:
        if r["family"] in ("gfsim", "gfsim plain", "hand_diffrax"):
            r["solver_overhead"] = r["steady_s"] / (r["lockstep_field_evals"] * g)
    gf = [r for r in res["rows"] if r["family"] == "gfsim"]
    hand = {r["knob"]: r for r in res["rows"] if r["family"] == "hand_diffrax"}
    res["gfsim_over_hand"] = {r["knob"]: r["steady_s"] / hand[r["knob"]]["steady_s"]
                              for r in gf if r["knob"] in hand}
    res["gfsim_compile_s"] = gf[0]["first_call_s"] - gf[0]["steady_s"] if gf else None
    res["headline"] = headline(res)
    res["max_rss_bytes"] = max_rss_bytes()
    res["wall_s"] = time.perf_counter() - t0
    return res


_FIRST_CALL = """
import time, jax, gfsim
data = gfsim.data.paper_pair()
net = gfsim.MLP((2, 2, 2), key=jax.random.key(0), init="disk", scale=1e-4, runs=288)
t = time.perf_counter()
jax.block_until_ready(gfsim.simulate(net, data, 300.0, reduction="mean", rtol=1e-8).loss)
print(time.perf_counter() - t)
"""


def persistent_cache() -> dict:
    """First call of W-A (288 seeds) in two fresh processes sharing an empty cache directory:
    the second process loads the compiled program from the persistent cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, GFSIM_CACHE_DIR=cache)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        times = [float(subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                      capture_output=True, text=True).stdout.split()[-1])
                 for _ in range(2)]
    return dict(first_process_first_call_s=times[0], second_process_first_call_s=times[1])


def run_workload(name: str, profile: str, repeats: int, *, skip=(), progress=None) -> dict:
    """All problems of one workload (W-B: split into sliding and non-sliding runs)."""
    problems = WORKLOADS[name](profile)
    out = dict(workload=name, problems=[])
    if name == "W-B":
        (p,) = problems
        if progress is not None:
            progress("W-B: reference on all runs (dopri8, rtol 1e-12, events)")
        theta_ref, info = M.reference(p)
        slides = np.asarray(info["slides_per_run"])
        out["reference_all_runs"] = info
        for sub, idx in split_sliding(p, slides):
            sub_info = dict(info, runs=int(idx.size),
                            slides_per_run=slides[idx].tolist())
            out["problems"].append(run_problem(sub, repeats, ref=(theta_ref[idx], sub_info),
                                               skip=skip, progress=progress))
    else:
        for p in problems:
            out["problems"].append(run_problem(p, repeats, skip=skip, progress=progress))
    if name == "W-A" and profile != "tiny" and "persistent_cache" not in skip:
        if progress is not None:
            progress("W-A: persistent cache (two fresh processes)")
        out["persistent_cache"] = persistent_cache()
    return out


def run_suite(out: str | None = None, *, profile: str = "quick", only=(), repeats: int = 3,
              skip=(), progress=None) -> dict:
    """Run the benchmark suite and (with ``out``) write ``bench.json``, ``bench.md`` and the
    plots there.

    **Arguments:**

    - ``out``: output directory (created); None writes nothing.
    - ``profile``: ``"quick"`` (about 30 minutes on a 2-core CPU, W-E 26 of them), ``"full"``
      (the protocol's sizes) or ``"tiny"`` (the tests).
    - ``only``: workload names to run (``"W-A"`` .. ``"W-E"``); default all.
    - ``repeats``: timed repeats after each first call (the median is reported).
    - ``skip``: method families to leave out (``"torch"``, ``"scipy"``, ``"hand_diffrax"``)
      and ``"persistent_cache"``.
    - ``progress``: a function called with one line per step.

    **Returns:** the results as a dict (what ``bench.json`` holds).
    """
    names = check_options(profile=profile, only=only, out=out, repeats=repeats)
    t0 = time.perf_counter()
    res = dict(command=None, profile=profile, repeats=repeats, machine=machine(),
               bench_extra=bench_extra(), workloads={})
    for name in names:
        t = time.perf_counter()
        try:
            w = run_workload(name, profile, repeats, skip=skip, progress=progress)
        except Exception as e:  # noqa: BLE001 - one failing workload must not lose the others
            w = dict(workload=name, error=f"{type(e).__name__}: {e}", problems=[])
        w["wall_s"] = time.perf_counter() - t
        res["workloads"][name] = w
    res["total_wall_s"] = time.perf_counter() - t0
    if out is not None:
        write(res, out)
    return res


def write(res: dict, out: str) -> dict:
    """Write ``bench.json``, ``bench.md`` and ``accuracy_<workload>.png`` into ``out``."""
    from .report import markdown, plot_workload

    os.makedirs(out, exist_ok=True)
    files = dict(json=os.path.join(out, "bench.json"), markdown=os.path.join(out, "bench.md"),
                 plots=[])
    for name, w in res["workloads"].items():
        if w.get("problems"):
            path = os.path.join(out, f"accuracy_{name}.png")
            plot_workload(w, path)
            files["plots"].append(path)
            w["plot"] = os.path.basename(path)
    with open(files["json"], "w") as f:
        json.dump(json_safe(res), f, indent=1, default=_json_default, allow_nan=False)
    with open(files["markdown"], "w") as f:
        f.write(markdown(res))
    return files


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
