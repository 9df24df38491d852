#!/bin/bash
# Run from the repository root of the device copy: bash .gpu_snapshot/gpu/device.sh
# Env: DEV (cuda), NCHECK (5000), DEADLINE (240), INSTANCES (200000), MINTIME (0.5), OUT, NATIVE_TIMEOUT (200)
set -u
DEV=${DEV:-cuda}; NCHECK=${NCHECK:-5000}; DEADLINE=${DEADLINE:-240}; INSTANCES=${INSTANCES:-200000}
MINTIME=${MINTIME:-0.5}; CHECK_TIMEOUT=${CHECK_TIMEOUT:-100}; BENCH_TIMEOUT=${BENCH_TIMEOUT:-290}
EXTRA=${EXTRA:-}
COMMIT=$(cat .gpu_snapshot/COMMIT)
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c 'import flint' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
cd .gpu_snapshot || exit 4
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
date -u; uname -a; nproc
nvidia-smi 2>&1 | head -20
python3 - <<'PY'
import torch, numpy, sympy, jinja2, flint, matplotlib, solvergen, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-", "numpy", numpy.__version__,
      "sympy", sympy.__version__, "flint", flint.__version__, "solvergen", solvergen.__file__, "threads", torch.get_num_threads())
PY
echo "=== correctness"; t0=$(date +%s)
timeout $CHECK_TIMEOUT python3 gpu/gpu_check.py --device $DEV --n $NCHECK --grad-n 2000 --out $OUT --commit $COMMIT
echo "correctness rc=$? in $(( $(date +%s) - t0 )) s"
echo "=== benchmark"; t0=$(date +%s)
timeout $BENCH_TIMEOUT python3 gpu/bench_cuda.py --device $DEV --deadline $DEADLINE --instances $INSTANCES \
  --min-time $MINTIME --out $OUT --commit $COMMIT $EXTRA
echo "benchmark rc=$? in $(( $(date +%s) - t0 )) s"
echo "=== native kernels on CUDA"; t0=$(date +%s)
timeout ${NATIVE_TIMEOUT:-200} python3 gpu/native_cuda.py --out $OUT --commit $COMMIT
echo "native rc=$? in $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,temperature.gpu --format=csv 2>&1
date -u
