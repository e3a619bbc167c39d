"""Running a planned sweep into a store: the local and Ray backends, resume, progress, status.

Resume is by construction: the plan is a pure function of the spec, and a batch is either
committed (its directory exists under ``STORE/batches``) or not at all. A resumed sweep checks
that the store was written by the same spec (the hash of the normalised spec), removes what a
killed writer left half-written, and solves exactly the batches that are not committed. A Ray
task retried after its batch was committed finds the batch there and writes nothing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
import traceback
import uuid

from .. import store as gstore
from .._signals import restore as restore_signals
from .._signals import stop_on_signals
from ._plan import Plan, format_plan, plan
from ._spec import FORMAT, Spec

# Status codes that mean a run did not do what was asked (see gfsim.Status).
REASONS = {
    "max_steps": "the step budget (max_steps) ran out before t1",
    "nonfinite": "the loss or its gradient became NaN or infinite",
    "failed": "the solver failed (e.g. an implicit solver's root find)",
    "sliding_capacity": "more pairs slid at once than max_sliding allows",
}


def _batch_error_path(store, batch_id):
    return os.path.join(os.fspath(store), gstore.ERRORS, f"{batch_id}.json")


def run_batch_task(store: str, batch_id: str, cfgs: list[dict], run_ids: list[int],
                   save_weights: bool, size: int | None = None) -> dict:
    """Solve one batch and commit it to ``store``; a batch already committed is not solved
    again. The unit of work of both backends (a Ray task runs exactly this)."""
    ds = _solve(store, batch_id, cfgs, run_ids, save_weights, size)
    return _skipped(batch_id, run_ids) if ds is None else _commit(store, batch_id, ds)


def _solve(store, batch_id, cfgs, run_ids, save_weights, size):
    from ._runs import solve_batch

    if os.path.isdir(gstore.batch_path(store, batch_id)):
        return None
    return solve_batch(cfgs, run_ids=run_ids, batch_id=batch_id, save_weights=save_weights,
                       size=size)


def _skipped(batch_id, run_ids) -> dict:
    return {"id": batch_id, "runs": len(run_ids), "failed": None, "skipped": True}


def _commit(store, batch_id, ds) -> dict:
    written = gstore.write_atomic(ds, gstore.batch_path(store, batch_id))
    err = _batch_error_path(store, batch_id)
    if os.path.exists(err):
        os.remove(err)
    failed = int(sum(str(s) in REASONS for s in ds["status"].values))
    return {"id": batch_id, "runs": ds.sizes["run"], "failed": failed, "skipped": not written}


def _manifest(spec: Spec, p: Plan) -> dict:
    return {
        "format": FORMAT,
        "name": spec.name,
        "spec": spec.normalised(),
        "spec_hash": spec.digest(),
        "runs_total": p.runs_total,
        "shapes": list(p.shapes),
        "batches": p.to_json(),
    }


LOCK = ".lock"


def lock_store(store: str):
    """Hold the store's write lock (``fcntl.flock`` on ``STORE/.lock``, released when the
    process ends, however it ends) or raise ValueError if another sweep holds it. Returns the
    open lock file; closing it releases the lock."""
    import fcntl

    f = open(os.path.join(store, LOCK), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise ValueError(
            f"--out {store!r} is being written by another gfsim sweep (pid {holder}); allowed: "
            "wait for it to finish (then --resume), or a new --out.") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def open_store(spec: Spec, store, *, resume: bool) -> tuple[dict, Plan, object]:
    """Create the store (atomically: the skeleton is renamed into place) or, with ``resume``,
    check an existing one against ``spec``, and take its write lock (:func:`lock_store`).
    Returns its manifest, plan and the held lock."""
    store = os.fspath(store)
    exists = os.path.exists(store) and not (os.path.isdir(store) and not os.listdir(store))
    if exists:
        if not resume:
            raise ValueError(
                f"--out {store!r} already exists; allowed: a new path, or --resume to continue "
                "the sweep it holds."
            )
        manifest = gstore.read_manifest(store)
        if manifest is None:
            raise ValueError(f"--out {store!r} is not a gfsim sweep store (no "
                             f"{gstore.MANIFEST}); allowed: a store written by gfsim sweep.")
        if manifest.get("spec_hash") != spec.digest():
            raise ValueError(
                f"--out {store!r} was written by a different spec (hash "
                f"{manifest.get('spec_hash', '?')[:12]}, this spec {spec.digest()[:12]}); "
                "allowed: the same spec, or a new --out."
            )
        # before removing what a killed writer left: a live writer's .tmp-* are not garbage
        lock = lock_store(store)
        for tmp in glob.glob(os.path.join(store, gstore.BATCHES, ".tmp-*")):
            shutil.rmtree(tmp, ignore_errors=True)
        p = Plan.from_json(manifest["batches"], manifest["shapes"], manifest["runs_total"])
        return manifest, p, lock
    p = plan(spec)
    manifest = _manifest(spec, p)
    parent, base = os.path.split(os.path.abspath(store))
    tmp = os.path.join(parent, f".tmp-{base}-{uuid.uuid4().hex}")
    try:
        os.makedirs(parent, exist_ok=True)
        os.makedirs(os.path.join(tmp, gstore.BATCHES))
        os.makedirs(os.path.join(tmp, gstore.ERRORS))
        gstore.write_json_atomic(manifest, os.path.join(tmp, gstore.MANIFEST))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"--out {store!r} cannot be created ({e.strerror or e}); allowed: a path in a "
            "writable directory with free space.") from None
    try:
        if os.path.isdir(store):
            os.rmdir(store)
        os.replace(tmp, store)
    except OSError:  # another sweep created it in the meantime
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(
            f"--out {store!r} was just created by another gfsim sweep; allowed: a new path, "
            "or --resume once it is done.") from None
    return manifest, p, lock_store(store)


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="run", file=sys.stderr, disable=not enabled,
                desc=desc or "sweep", dynamic_ncols=True, smoothing=0.1)


def dry_run(spec: Spec) -> str:
    import jax

    return format_plan(spec, plan(spec), devices=len(jax.devices()))


def sweep(spec: Spec, store, *, backend: str = "local", resume: bool = False,
          progress: bool = True, address: str | None = None) -> dict:
    """Run every batch of ``spec`` that ``store`` does not hold yet.

    **Arguments:**

    - ``spec``: a validated :class:`Spec` (:func:`load_spec`, :func:`parse_spec`).
    - ``store``: the store directory; it must not exist unless ``resume``.
    - ``backend``: ``"local"`` (this process; the run axis of each batch is sharded over
      ``jax.devices()``) or ``"ray"`` (one Ray task per batch on an existing cluster).
    - ``resume``: continue the sweep in an existing store (written by the same spec).
    - ``progress``: show a progress bar on stderr (runs done, failures, time left).
    - ``address``: the Ray cluster's address (default: ``"auto"``, the local cluster).

    **Returns:** a summary dict: ``runs_total``, ``runs_done``, ``failed`` (runs whose status
    is a failure), ``batch_errors`` (batch id -> message), ``interrupted`` (the signal number
    of a SIGINT/SIGTERM that stopped a local sweep at a batch boundary, else None: resume it),
    ``wall_time``.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"backend={backend!r} is not allowed; allowed: local, ray.")
    start = time.perf_counter()
    store = os.path.abspath(os.fspath(store))
    ray = _connect_ray(address) if backend == "ray" else None  # before any store exists
    manifest, p, lock = open_store(spec, store, resume=resume)
    try:
        return _sweep_locked(spec, store, manifest, p, backend, ray, progress, start)
    finally:
        lock.close()


def _sweep_locked(spec, store, manifest, p, backend, ray, progress, start) -> dict:
    runs = spec.runs()
    done = set(gstore.committed_batches(store, manifest))
    pending = [b for b in p.batches if b.id not in done]
    initial = sum(len(b.runs) for b in p.batches if b.id in done)
    bar = _progress(p.runs_total, initial, progress, spec.name)
    summary = {"runs_total": p.runs_total, "runs_done": initial, "failed": 0, "batch_errors": {}}
    args = {b.id: (store, b.id, [runs[i] for i in b.runs], list(b.runs),
                   spec.options["save_weights"], b.size) for b in pending}

    def finished(batch, result=None, error=None):
        if error is not None:
            summary["batch_errors"][batch.id] = error
            gstore.write_json_atomic({"id": batch.id, "error": error},
                                     _batch_error_path(store, batch.id))
        else:
            summary["runs_done"] += len(batch.runs)
            summary["failed"] += result["failed"] or 0
        bar.update(len(batch.runs) if error is None else 0)
        bar.set_postfix(failed=summary["failed"], batch_errors=len(summary["batch_errors"]),
                        refresh=False)

    stop: dict = {"signal": None}
    restore = _stop_on_signals(stop) if backend == "local" else {}
    try:
        if backend == "local":
            _run_local(pending, args, finished, stop)
        else:
            _run_ray(ray, pending, args, finished)
    finally:
        bar.close()
        restore_signals(restore)
    summary["interrupted"] = stop["signal"]
    summary["wall_time"] = time.perf_counter() - start
    return summary


def _stop_on_signals(stop: dict) -> dict:
    """SIGINT and SIGTERM end the sweep at the next batch boundary: the batch being solved is
    finished and committed, no new one starts (``stop["signal"]`` records which signal). A
    second signal interrupts at once (KeyboardInterrupt); committed batches stay whole either
    way. Returns the old handlers."""
    return stop_on_signals(stop, "gfsim sweep", "batch")


def _run_local(pending, args, finished, stop=None):
    """Solve batch after batch in this process; each batch is written (and committed) by a
    writer thread while the next one is solved, so store writes overlap compiled compute."""
    from concurrent.futures import Future, ThreadPoolExecutor

    def drain(b, fut):
        try:
            result = fut.result()
        except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
            finished(b, error=_one_line(e))
        else:
            finished(b, result)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gfsim-store") as writer:
        inflight = None
        for b in pending:
            if stop is not None and stop["signal"] is not None:
                break
            store, batch_id, _, run_ids = args[b.id][:4]
            try:
                ds = _solve(*args[b.id])
            except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                traceback.print_exc(file=sys.stderr)
                finished(b, error=_one_line(e))
                continue
            if inflight is not None:
                drain(*inflight)
            if ds is None:
                fut = Future()
                fut.set_result(_skipped(batch_id, run_ids))
            else:
                fut = writer.submit(_commit, store, batch_id, ds)
            inflight = (b, fut)
        if inflight is not None:
            drain(*inflight)


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text.splitlines()[0] if text else type(e).__name__


def _ray_batch(*args):
    return run_batch_task(*args)


def _connect_ray(address):
    try:
        import ray
    except ImportError:
        raise ValueError(
            "backend='ray' needs Ray; allowed: pip install 'gfsim[ray]', or backend='local'."
        ) from None
    try:
        ray.init(address=address or "auto", ignore_reinit_error=True, log_to_driver=False,
                 logging_level="ERROR")
    except ConnectionError:
        raise ValueError(f"--address {address or 'auto'}: no running Ray cluster found; "
                         "allowed: the address of a running cluster (ray start --head).") from None
    return ray


def _run_ray(ray, pending, args, finished):
    task = ray.remote(num_cpus=1, max_retries=3)(_ray_batch)
    refs = {task.remote(*args[b.id]): b for b in pending}
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1)
        b = refs.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - a task that failed after its retries
            cause = getattr(e, "cause", None) or e
            finished(b, error=_one_line(cause))
        else:
            finished(b, result)


# ----------------------------------------------------------------------------------------------


def status(store) -> dict:
    """What a store holds: ``runs_total``, ``runs_done``, ``batches_total``,
    ``batches_done``, ``counts`` (status label -> runs), ``failures`` (one dict per failed
    run: ``run_id``, ``status``, ``reason`` and its swept fields), ``batch_errors``."""
    import numpy as np

    store = os.fspath(store)
    manifest = gstore.read_manifest(store)
    if manifest is None:
        raise ValueError(f"STORE {store!r} is not a gfsim sweep store (no {gstore.MANIFEST}).")
    ds = gstore.load(store)
    swept = [n for a in manifest["spec"]["axes"] for n in a["names"]]
    flat = gstore.flat(ds)
    labels = flat["status"].values.astype(str) if "status" in flat else np.array([], str)
    counts = {str(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True))}
    failures = []
    for i in np.flatnonzero(np.isin(labels, list(REASONS))):
        failures.append({"run_id": int(flat["run_id"].values[i]), "status": str(labels[i]),
                         "reason": REASONS[str(labels[i])],
                         **{k: flat[k].values[i].item() for k in swept}})
    errors = {}
    for f in sorted(glob.glob(os.path.join(store, gstore.ERRORS, "*.json"))):
        with open(f) as fh:
            e = json.load(fh)
        if not os.path.isdir(gstore.batch_path(store, e["id"])):
            errors[e["id"]] = e["error"]
    done = gstore.committed_batches(store, manifest)
    return {"name": manifest.get("name", ""), "runs_total": manifest["runs_total"],
            "runs_done": int(ds.sizes["run"]), "batches_total": len(manifest["batches"]),
            "batches_done": len(done), "counts": counts, "failures": failures,
            "batch_errors": errors}


def format_status(s: dict, *, limit: int = 20) -> str:
    lines = [f"{s['name'] or 'sweep'}: {s['runs_done']} / {s['runs_total']} runs done "
             f"({s['batches_done']} / {s['batches_total']} batches)"]
    for label, n in sorted(s["counts"].items()):
        lines.append(f"  {label}: {n}")
    if s["failures"]:
        lines.append(f"failed runs: {len(s['failures'])}")
        for f in s["failures"][:limit]:
            extra = " ".join(f"{k}={v}" for k, v in f.items()
                             if k not in ("run_id", "status", "reason"))
            lines.append(f"  run {f['run_id']}: {f['status']} ({f['reason']}) {extra}".rstrip())
        if len(s["failures"]) > limit:
            lines.append(f"  ... and {len(s['failures']) - limit} more")
    for bid, err in s["batch_errors"].items():
        lines.append(f"batch {bid} failed: {err}")
    return "\n".join(lines)
