#!/usr/bin/env bash
# The benchmark suite on an accelerator machine, in a few minutes; results under $OUT (or ./gpu_out).
# The device image already holds jax (CUDA), diffrax, equinox, optax, scipy, torch: gfsim itself is
# pure Python and runs from the checkout.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 GFSIM_CACHE_DIR=/tmp/gfsim_jax_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, diffrax, equinox; print(jax.__version__, jax.devices(), diffrax.__version__, equinox.__version__)" | tee -a "$OUT/gpu.txt"
timeout 120 python3 benchmarks/core.py --repeats 3 --out "$OUT/core.json" > "$OUT/core.log" 2>&1; echo "core rc=$?"
timeout 90 python3 benchmarks/kinks.py --repeats 3 --quick --out "$OUT/kinks.json" > "$OUT/kinks.log" 2>&1; echo "kinks rc=$?"
timeout 120 python3 benchmarks/scaling.py --runs 288 2304 18432 --out "$OUT/scaling.json" > "$OUT/scaling.log" 2>&1; echo "scaling rc=$?"
timeout 120 python3 benchmarks/baselines.py --repeats 3 --torch-max-steps 20000 --out "$OUT/baselines.json" > "$OUT/baselines.log" 2>&1; echo "baselines rc=$?"
timeout 300 python3 -m gfsim.cli bench --quick --repeats 3 --out "$OUT/suite" > "$OUT/suite.log" 2>&1; echo "suite rc=$?"
tail -n 5 "$OUT"/*.log
