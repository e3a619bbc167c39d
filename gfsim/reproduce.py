"""``gfsim reproduce``: run the paper's experiments and write figures and a claims-vs-measured
report (Markdown and HTML) to an output directory."""

from __future__ import annotations

import html
import json
import os
import platform
import tempfile
import time
from importlib import metadata

from .experiments import EXPERIMENTS, ORDER, PROFILES, Result


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
              workers: int = 1) -> str:
    import jax

    lines = [
        "# gfsim reproduction report",
        "",
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
        lines += ["", f"## {r.title}", "", f"Time: {r.seconds:.1f} s. Data: `{r.data_file}`.", ""]
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


def run_experiment(name: str, profile: str, out: str, progress=None) -> Result:
    """One experiment by name (what each worker process runs)."""
    return EXPERIMENTS.get(name)(profile, out, progress)


_QUEUE = None  # a worker process's channel for progress messages


def _worker_init(queue) -> None:
    global _QUEUE
    _QUEUE = queue


def _worker_task(runner, name: str, profile: str, out: str) -> Result:
    return runner(name, profile, out, lambda msg: _QUEUE.put(msg))


def run_all(names: list[str], profile: str, out: str, workers: int, on_message=None,
            on_done=None, runner=run_experiment) -> dict[str, Result]:
    """Run ``runner(name, profile, out, progress)`` for each name, in this process
    (``workers`` = 1) or in that many fresh processes (spawned: JAX is not fork-safe), the
    longest first. Compiling is single-threaded and most of a quick run, so two processes
    overlap one experiment's compiles with another's; each process has its own JAX runtime.
    The first failure stops the rest (running workers are terminated) and is raised, naming
    its experiment."""
    on_message = on_message or (lambda msg: None)
    on_done = on_done or (lambda name: None)
    results = {}
    if workers <= 1 or len(names) <= 1:
        for n in names:
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
    pool = ProcessPoolExecutor(max_workers=min(workers, len(names)), mp_context=ctx,
                               initializer=_worker_init, initargs=(channel,))
    try:
        futures = {pool.submit(_worker_task, runner, n, profile, out): n for n in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            try:
                while True:
                    on_message(channel.get_nowait())
            except queue_mod.Empty:
                pass
            for f in done:
                name = futures[f]
                try:
                    results[name] = f.result()
                except Exception as e:
                    raise RuntimeError(f"experiment {name!r} failed: {e!r}") from e
                on_done(name)
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


# Rough seconds of each experiment's quick profile on a 2-core CPU, empty compilation cache:
# only the order in which parallel workers take them (longest first).
COST = {"depth": 90, "most_datasets": 70, "negative": 45, "neurons": 22, "linear": 17,
        "gf_vs_gd": 14}


def reproduce(out: str = "gfsim-reproduce", *, profile: str = "quick",
              experiments: list[str] | None = None, progress: bool = True,
              workers: int | None = None) -> list[Result]:
    """Run the selected experiments (default: all) and write the report to ``out``.

    ``workers``: processes running experiments side by side (default: 2, or 1 on a one-core
    machine; 1 runs them in this process)."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}; allowed: {', '.join(PROFILES)}.")
    if experiments:
        names = list(experiments)
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
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(names), desc="gfsim reproduce", disable=not progress) as bar:
        done = run_all(names, profile, out, workers, on_message=bar.set_postfix_str,
                       on_done=lambda n: bar.update())
    results = [done[n] for n in names]  # the report keeps the experiments' order
    total = time.perf_counter() - start
    md = _markdown(results, profile, _versions(), total, min(workers, len(names)))
    # Written last and atomically: a report on disk always describes a finished run.
    for name, text in (("report.md", md), ("report.html", _html(md, results))):
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))
    return results
