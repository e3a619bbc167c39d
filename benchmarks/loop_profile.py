"""Where one iteration of the event solver's loop spends its time: one run under JAX's
profiler, XLA's compiled operations ranked by their own time per loop iteration, each with its
output shape and the JAX operation it came from.

    python benchmarks/loop_profile.py OUT.json [--case we-seed3|n1000] [--top 25]

--case we-seed3: W-E quick, depth 2, square loss, seed 3 (the sliding run), rtol 1e-4, one lane,
to t1 = 12 (the sliding phase); --case n1000: the full depth experiment's data (n = 1000, d = 10,
width 64), depth 2, exponential loss, rtol 1e-5 / atol 1e-8, one run to t1 = 30. Operations whose
output has at least half as many elements as the run has (unit, point) pairs are marked
"pairs": those grow with n. The profiler's trace holds at most about a million events, so it
may cover only the first part of the run; the figures are per iteration of the part it covers.
The profiler adds about 15% to the run's time, spread over the operations.
"""

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import tempfile
import time

# (the HLO dump must be asked for before JAX starts)
_DUMP = tempfile.mkdtemp(prefix="gfsim-hlo-")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={_DUMP} "
                           "--xla_dump_hlo_as_text").strip()
os.environ["GFSIM_TRACE_CACHE"] = "0"  # trace afresh, so the program is compiled (and dumped)
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import jax  # noqa: E402
import numpy as np  # noqa: E402

import gfsim  # noqa: E402
from gfsim.methods import Events  # noqa: E402


def case(name):
    """(label, call, pairs): the run to profile, a function running it once, its pair count."""
    if name == "we-seed3":
        from gfsim.bench import workloads
        p = next(q for q in workloads.workload_e("quick") if q.name == "W-E depth 2 square")
        p = p.subset(np.array([3]), p.name + ", seed 3", "seed 3")
        label = ("W-E quick, depth 2, square loss, seed 3 (teacher-student, n = 256, d = 10, "
                 "width 64), rtol 1e-4, one lane, t1 = 12")

        def call():
            return gfsim.simulate(p.net, p.data, 12.0, rtol=1e-4, loss="square", num_saves=16,
                                  method=Events(lanes=1))

        return label, call, p.data.X.shape[-2] * p.net.weights[0].shape[-2]
    from gfsim.experiments import depth as D
    cfg = dict(D.SETTINGS["full"])
    kd, kn = jax.random.split(jax.random.key(1))
    data = gfsim.data.teacher_student(kd, cfg["n"], cfg["dim"], teacher_widths=D.TEACHER_WIDTHS,
                                      labels="sign")
    net = gfsim.MLP((cfg["dim"], cfg["width"], 1), "relu", key=jax.random.split(kn)[1],
                    init="gaussian", scale=cfg["scale"], runs=1)
    label = (f"depth experiment, full profile's data: n = {cfg['n']}, d = {cfg['dim']}, width "
             f"{cfg['width']}, depth 2, exponential loss, rtol {cfg['rtol']:g}, atol "
             f"{cfg['atol']:g}, one run, t1 = 30")

    def call():
        return gfsim.simulate(net, data, 30.0, loss="exponential", reduction="mean",
                              rtol=cfg["rtol"], atol=cfg["atol"], num_saves=D.NUM_SAVES,
                              decades=D.DECADES, method=Events())

    return label, call, cfg["n"] * cfg["width"]


def hlo_ops():
    """name -> (output shape, JAX op path) from the largest compiled module dumped."""
    files = glob.glob(os.path.join(_DUMP, "*after_optimizations.txt"))
    text = open(max(files, key=os.path.getsize)).read()
    ops = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[\d,]*\})? ", line)
        if m and m.group(1) not in ops:
            path = re.search(r'op_name="([^"]*)"', line)
            ops[m.group(1)] = (m.group(2), path.group(1) if path else "")
    return ops


def self_times(trace_dir):
    """op name -> own time in us (nested events subtracted), calls, and calls at the top level
    (inside no other operation), on XLA's compute threads."""
    fn = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(fn) as f:
        d = json.load(f)
    ev = d["traceEvents"] if isinstance(d, dict) else d
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
    per_thread = collections.defaultdict(list)
    for e in ev:
        if e.get("ph") == "X" and "Eigen" in str(names.get((e["pid"], e["tid"]))):
            per_thread[e["tid"]].append((e["ts"], e["ts"] + e["dur"], e["name"]))
    own, calls, top = collections.Counter(), collections.Counter(), collections.Counter()
    for rows in per_thread.values():
        rows.sort(key=lambda r: (r[0], -r[1]))
        stack = []
        for start, end, name in rows:
            while stack and stack[-1][1] <= start:
                stack.pop()
            if stack:
                own[stack[-1][2]] -= end - start
            if not any(r[2] != "ThunkExecutor::Execute" for r in stack):
                top[name] += 1
            stack.append((start, end, name))
            own[name] += end - start
            calls[name] += 1
    return own, calls, top


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--case", default="we-seed3", choices=("we-seed3", "n1000"))
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    label, call, pairs = case(a.case)
    jax.block_until_ready(call().final_loss)  # compile
    t0 = time.perf_counter()
    tr = call()
    jax.block_until_ready(tr.final_loss)
    steady = time.perf_counter() - t0
    trace_dir = tempfile.mkdtemp(prefix="gfsim-trace-")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    jax.block_until_ready(call().final_loss)
    jax.profiler.stop_trace()
    own, calls, top = self_times(trace_dir)
    ops = hlo_ops()
    # the loop's iterations in the trace: its body's top-level conditionals run once an
    # iteration (the most frequent of them); at most the run's step count
    iters = int(np.sum(tr.num_steps))
    conds = [top[n] for n in top if n.startswith("cond.")]
    covered = min(iters, max(conds)) if conds else iters
    rows, by_kind = [], collections.Counter()
    for name, us in own.most_common():
        shape, path = ops.get(name, ("?", ""))
        dims = [int(x) for x in re.findall(r"\d+", shape.split("[", 1)[1])] if (
            "[" in shape and not shape.startswith("(")) else []
        size = math.prod(dims) if dims else 0
        kind = ("loop" if name.startswith(("cond", "while", "Thunk")) else
                "pairs" if size >= pairs // 2 else "small")
        by_kind[kind] += us
        rows.append(dict(op=name, us_per_iteration=round(us / covered, 1),
                         calls_per_iteration=round(calls[name] / covered, 2), shape=shape,
                         kind=kind, jax_op=path.split("/while/body/")[-1]))
    total = sum(by_kind.values())
    out = dict(case=a.case, description=label, steady_s=round(steady, 3), steps=iters,
               ms_per_step=round(1e3 * steady / iters, 3), iterations_in_trace=covered,
               profiled_us_per_iteration=round(total / covered, 1),
               share={k: round(v / total, 3) for k, v in by_kind.items()},
               top=rows[:a.top])
    print(f"{label}\nsteady {steady:.2f} s, {iters} steps, {out['ms_per_step']} ms a step; "
          f"profiled {out['profiled_us_per_iteration']} us an iteration over {covered}; shares "
          f"{out['share']}")
    for r in rows[:a.top]:
        print(f"{r['us_per_iteration']:8.1f} us {r['calls_per_iteration']:5.2f}x {r['kind']:5s} "
              f"{r['op']:30s} {r['shape']:20s} {r['jax_op'][-70:]}")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
