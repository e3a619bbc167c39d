"""W-E (quick size: n = 256, depth 2, 4 seeds, t1 = 30) with the default crossings="auto" at
rtol 1e-4 and 1e-5 (steps go through crossings), the same with one lane (runs one after the
other: the sliding seed does not hold three finished lanes in lockstep), optionally
crossings="locate" at rtol 1e-4, and JAX GD's first-order fit, all in one run against the
Dopri8 reference.

    python benchmarks/we_crossings.py OUT.json [--locate]
"""

import json
import sys
import time

import gfsim.bench.methods as M
from gfsim.bench import workloads
from gfsim.bench.measure import fit_first_order
from gfsim.methods import Events


def main(out, locate=False):
    rows = {}
    for p in workloads.workload_e("quick"):
        if "depth 2" not in p.name:
            continue
        t0 = time.perf_counter()
        theta_ref, info = M.reference(p)
        res = dict(reference=info, reference_s=time.perf_counter() - t0)
        res["auto"] = M.bench_gfsim(p, theta_ref, 1, rtols=(1e-4, 1e-5), memory=False)
        res["one_lane"] = M.bench_gfsim(p, theta_ref, 1, rtols=(1e-4, 1e-5), memory=False,
                                        method=Events(lanes=1))
        if locate:
            res["locate"] = M.bench_gfsim(p, theta_ref, 1, rtols=(1e-4,), memory=False,
                                          method=Events(crossings="locate"))
        gd = M.bench_gd(p, theta_ref, 1, memory=False)
        res["gd"] = gd
        res["gd_fit"] = fit_first_order(gd, p.t1)
        rows[p.name] = res
        for name in ("auto", "one_lane", "locate"):
            for r in res.get(name, []):
                print(p.name, name, r["knob"], r["trajectory_method"], f"{r['steady_s']:.2f} s",
                      f"accuracy {r['accuracy']:.2e}", f"steps max {r['steps_max']}",
                      "" if name == "one_lane" else f"lockstep waste {r['lockstep_waste']:.2f}",
                      flush=True)
        print(p.name, "JAX GD to 1e-4 (extrapolated):", res["gd_fit"]["extrapolated"]["0.0001"],
              flush=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1, default=float)


if __name__ == "__main__":
    main(sys.argv[1], locate="--locate" in sys.argv[2:])
