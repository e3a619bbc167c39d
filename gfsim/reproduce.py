"""``gfsim reproduce``: run the paper's experiments and write figures, one store per experiment
(``<experiment>.zarr``: the format ``gfsim sweep`` writes, read by ``gfsim.load``) and a
claims-vs-measured report (Markdown and HTML) to an output directory.

A store is written last and atomically, so its presence means the experiment finished; it keeps
the experiment's claims in its attributes, which is how ``--resume`` rebuilds the report
without running the experiment again. The report on disk is never complete beside half-written
data: it is replaced by an INCOMPLETE one before anything runs, and by the complete one at the
end."""

from __future__ import annotations

import glob
import html
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from importlib import metadata

from . import store as gstore
from ._signals import SIGNALS, stop_on_signals
from ._signals import restore as restore_signals
from .experiments import EXPERIMENTS, ORDER, PROFILES, Result, store_name


def check_out_dir(out: str) -> str:
    """Create ``out`` if needed and make sure it is writable; one clear error otherwise."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ValueError(f"--out={out!r} is not a writable directory ({e.strerror}).") from None
    return out


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("gfsim", "jax", "jaxlib", "diffrax", "equinox", "optax", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _markdown(results: list[Result], profile: str, versions: dict, total: float,
              workers: int = 1, banner: str | None = None) -> str:
    import jax

    lines = [
        "# gfsim reproduction report",
        "",
        *([banner, ""] if banner else []),
        "Timor, Vardi & Shamir, *Implicit Regularization Towards Rank Minimization in ReLU "
        "Networks* (ALT 2023), re-run with true gradient flow.",
        "",
        f"Profile: `{profile}`; device: `{jax.devices()[0].device_kind}` "
        f"({jax.default_backend()}); float64: {jax.config.jax_enable_x64}; total "
        f"{total:.1f} s" + (f" with {workers} worker processes (each experiment's time below "
                            "is its own wall time, shared cores included)" if workers > 1
                            else "") + ".",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "| experiment | claim | setting | measured | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for c in r.claims:
            lines.append(f"| {r.name} | {c.claim} | {c.setting} | {c.measured} | **{c.verdict}** |")
    for r in results:
        lines += ["", f"## {r.title}", "", f"Time: {r.seconds:.1f} s. Data: `{r.data_file}` "
                  "(`gfsim.load`, `gfsim plot`).", ""]
        lines.append("Settings: `" + json.dumps(r.settings, sort_keys=True) + "`")
        lines.append("")
        for note in r.notes:
            lines += [f"> {note}", ""]
        for fig in r.figures:
            lines += [f"![{fig}]({fig})", ""]
    return "\n".join(lines) + "\n"


def _html(markdown_text: str, results: list[Result]) -> str:
    body = [f"<pre>{html.escape(markdown_text)}</pre>"]
    for r in results:
        for fig in r.figures:
            body.append(f'<h3>{html.escape(fig)}</h3><img src="{html.escape(fig)}" width="900">')
    return ("<!doctype html><html><head><meta charset='utf-8'><title>gfsim reproduction"
            "</title></head><body>" + "\n".join(body) + "</body></html>\n")


def store_path(out: str, name: str) -> str:
    return os.path.join(out, store_name(name))


def write_data(out: str, result: Result, profile: str) -> str:
    """Write ``result.data`` to ``out/<name>.zarr`` (atomically: written beside it, renamed
    into place), with the profile and the rest of the result in its attributes; an older store
    there is replaced. Frees ``result.data``. Returns the store's path."""
    ds = result.data
    if ds is None:
        raise ValueError(f"experiment {result.name!r} returned no data (Result.data).")
    result.data_file = store_name(result.name)
    ds.attrs.update(experiment=result.name, profile=profile, result=result.to_json())
    path = store_path(out, result.name)
    if os.path.exists(path):
        shutil.rmtree(path)
    if not gstore.write_atomic(ds, path):
        raise ValueError(f"{path!r} was written by another process meanwhile.")
    result.data = None
    return path


def read_done(out: str, name: str, profile: str) -> Result | None:
    """The result of experiment ``name`` from its store in ``out``, if one is there (a store
    exists only once the experiment finished: it is written last, atomically); None if not.
    A store of another profile is an error: resuming would mix scales."""
    import xarray as xr

    path = store_path(out, name)
    if not os.path.isdir(path):
        return None
    try:
        with xr.open_zarr(path, consolidated=None, decode_times=False) as ds:
            attrs = dict(ds.attrs)
        result = Result.from_json(attrs["result"])
    except Exception as e:  # noqa: BLE001 - a damaged store is run again
        print(f"gfsim reproduce: {path} is unreadable ({type(e).__name__}); running {name} "
              "again", file=sys.stderr)
        return None
    if attrs.get("profile") != profile:
        raise ValueError(
            f"--resume: {path!r} was written by profile {attrs.get('profile')!r}, not "
            f"{profile!r}; allowed: the same profile, or a run without --resume (which redoes "
            "every experiment).")
    return result


def run_experiment(name: str, profile: str, out: str, progress=None) -> Result:
    """Run one experiment by name and write its store (what each worker process runs)."""
    result = EXPERIMENTS.get(name)(profile, out, progress)
    write_data(out, result, profile)
    return result


_QUEUE = None  # a worker process's channel for progress messages


def _worker_init(queue, modules=()) -> None:
    import importlib
    import signal

    global _QUEUE
    _QUEUE = queue
    # The parent decides when to stop (a Ctrl-C reaches the whole process group): a worker
    # finishes its experiment, or is killed by the parent on a second signal.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    for m in modules:  # experiments registered outside gfsim (the spawned worker lacks them)
        importlib.import_module(m)


def _worker_task(runner, name: str, profile: str, out: str) -> Result:
    return runner(name, profile, out, lambda msg: _QUEUE.put(msg))


def _registering_modules() -> list[str]:
    mods = {fn.__module__ for fn in EXPERIMENTS._items.values()}
    return sorted(m for m in mods if m != "__main__" and not m.startswith("gfsim."))


def run_all(names: list[str], profile: str, out: str, workers: int, on_message=None,
            on_done=None, runner=run_experiment, stop: dict | None = None) -> dict[str, Result]:
    """Run ``runner(name, profile, out, progress)`` for each name, in this process
    (``workers`` = 1) or in that many fresh processes (spawned: JAX is not fork-safe), the
    longest first. Compiling is single-threaded and most of a quick run, so two processes
    overlap one experiment's compiles with another's; each process has its own JAX runtime.
    The first failure stops the rest (running workers are killed) and is raised, naming its
    experiment. Once ``stop["signal"]`` is set no further experiment starts; the running ones
    finish. Returns the results of the experiments that finished."""
    on_message = on_message or (lambda msg: None)
    on_done = on_done or (lambda name: None)
    stop = stop if stop is not None else {}
    results = {}
    if workers <= 1 or len(names) <= 1:
        for n in names:
            if stop.get("signal") is not None:
                break
            on_message(n)
            results[n] = runner(n, profile, out, on_message)
            on_done(n)
        return results

    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    channel = ctx.Queue()
    order = sorted(names, key=lambda n: -COST.get(n, 0.0))
    workers = min(workers, len(names))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(channel, _registering_modules()))
    try:
        futures = {}
        # submitted one by one as workers free up, so that a stop leaves no queued experiment
        while order or futures:
            while order and len(futures) < workers and stop.get("signal") is None:
                n = order.pop(0)
                futures[pool.submit(_worker_task, runner, n, profile, out)] = n
            if not futures:
                break
            done, _ = wait(set(futures), timeout=0.25, return_when=FIRST_COMPLETED)
            try:
                while True:
                    on_message(channel.get_nowait())
            except queue_mod.Empty:
                pass
            for f in done:
                name = futures.pop(f)
                try:
                    results[name] = f.result()
                except Exception as e:
                    raise RuntimeError(f"experiment {name!r} failed: {e!r}") from e
                on_done(name)
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):
            p.kill()  # workers ignore SIGTERM
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


# Rough seconds of each experiment's quick profile on a 2-core CPU, empty compilation cache:
# only the order in which parallel workers take them (longest first).
COST = {"depth": 90, "most_datasets": 70, "negative": 45, "neurons": 22, "linear": 17,
        "gf_vs_gd": 14}


class Interrupted(Exception):
    """``gfsim reproduce`` stopped by SIGINT or SIGTERM at an experiment boundary: the report
    says INCOMPLETE and lists ``missing``; ``reproduce(..., resume=True)`` completes it."""

    def __init__(self, signum: int, done: list[str], missing: list[str]):
        import signal

        self.signal = signum
        self.done = done
        self.missing = missing
        super().__init__(f"interrupted by {signal.Signals(signum).name}: "
                         f"{len(done)} / {len(done) + len(missing)} experiments done")


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_report(out: str, results: list[Result], profile: str, total: float, workers: int,
                  banner: str | None = None) -> None:
    md = _markdown(results, profile, _versions(), total, workers, banner)
    # each file replaced in one rename: a reader sees the old one or the new one, never half
    for name, text in (("report.md", md), ("report.html", _html(md, results))):
        _write_text_atomic(os.path.join(out, name), text)


def _banner(reason: str, missing: list[str], resume_hint: bool = True) -> str:
    text = (f"**INCOMPLETE** ({reason}): no data and no verdicts yet for "
            f"{', '.join(missing)}.")
    if resume_hint:
        text += (" Complete it with the same command and `--resume` (it runs only what is "
                 "missing).")
    return text


def reproduce(out: str = "gfsim-reproduce", *, profile: str = "quick",
              experiments: list[str] | None = None, progress: bool = True,
              workers: int | None = None, resume: bool = False) -> list[Result]:
    """Run the selected experiments (default: all) and write the report to ``out``.

    **Arguments:**

    - ``out``: the output directory (figures, one ``<experiment>.zarr`` store each, the report).
    - ``profile``: ``"quick"`` (a laptop CPU in minutes) or ``"full"`` (the authors' scale).
    - ``experiments``: names to run (default: all, in :data:`ORDER`).
    - ``progress``: a progress bar on stderr.
    - ``workers``: processes running experiments side by side (default: 2, or 1 on a one-core
      machine; 1 runs them in this process).
    - ``resume``: keep the experiments whose store is already in ``out`` (same profile) and run
      only the others. Without it every selected experiment runs again.

    SIGINT or SIGTERM stops at an experiment boundary (the running ones finish and are
    written; a second signal stops at once): the report is written with an INCOMPLETE banner
    listing what is missing and :class:`Interrupted` is raised. The report is replaced by an
    INCOMPLETE one before any data is touched, and by the complete one only at the end.

    **Returns:** the results, in the order of ``experiments``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}; allowed: {', '.join(PROFILES)}.")
    if experiments:
        names = list(dict.fromkeys(experiments))
    else:
        names = [n for n in ORDER if n in EXPERIMENTS]
        names += [n for n in EXPERIMENTS.names() if n not in names]
    for n in names:
        EXPERIMENTS.check(n, "experiment")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers={workers!r}; allowed: an integer >= 1.")
    check_out_dir(out)
    for tmp in glob.glob(os.path.join(out, ".tmp-*.zarr-*")):  # a killed run's half store
        shutil.rmtree(tmp, ignore_errors=True)
    done = {}
    if resume:
        for n in names:
            r = read_done(out, n, profile)
            if r is not None:
                done[n] = r
    todo = [n for n in names if n not in done]
    workers_used = max(1, min(workers, len(todo)))
    start = time.perf_counter()
    if todo:
        # first: no report on disk may look complete while the data below it changes
        _write_report(out, [done[n] for n in names if n in done], profile, 0.0, workers_used,
                      _banner("running", todo, resume_hint=False) + " This report is "
                      "replaced when the run ends; if it is still here, the run was killed: "
                      "rerun with `--resume`.")
        for n in todo:
            if os.path.exists(store_path(out, n)):
                shutil.rmtree(store_path(out, n))
    from tqdm import tqdm

    stop: dict = {"signal": None}
    handlers = stop_on_signals(stop, "gfsim reproduce", "experiment")
    new: dict = {}
    failure = None
    try:
        with tqdm(total=len(names), initial=len(done), desc="gfsim reproduce",
                  disable=not progress) as bar:
            new = run_all(todo, profile, out, workers, on_message=bar.set_postfix_str,
                          on_done=lambda n: bar.update(), stop=stop)
    except KeyboardInterrupt:  # a second signal (or Ctrl-C without the handler): stop now
        if stop["signal"] is None:
            stop["signal"] = SIGNALS[0]
    except BaseException as e:
        failure = e
    finally:
        restore_signals(handlers)
    for n in names:  # what finished before a stop or a failure is on disk
        if n not in done and n not in new:
            r = read_done(out, n, profile)
            if r is not None:
                new[n] = r
    done.update(new)
    total = time.perf_counter() - start
    missing = [n for n in names if n not in done]
    results = [done[n] for n in names if n in done]  # the report keeps the experiments' order
    if missing:
        import signal

        reason = (f"interrupted by {signal.Signals(stop['signal']).name}"
                  if stop["signal"] is not None else f"failed: {failure!r}"[:300])
        _write_report(out, results, profile, total, workers_used, _banner(reason, missing))
        if failure is not None:
            raise failure
        raise Interrupted(stop["signal"], [n for n in names if n in done], missing)
    _write_report(out, results, profile, total, workers_used)
    if failure is not None:
        raise failure
    return results
