#!/usr/bin/env bash
# The benchmark suite and the full Table 1 protocol on a lent GPU machine, inside 8 minutes.
# Prepare here first with benchmarks/prepare_device.sh, then run through the device tool with
#   carry: [".whl", ".devdata"]   command: bash benchmarks/device_run.sh
# Everything is written under a work folder and packed into $OUT/device.tar.gz (the device tool
# brings back at most 8 files); without the tool, results stay in out/device.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-out/device}
mkdir -p "$WORK"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/benchmarks PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$WORK/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$WORK/gpu.txt"
PARTS=${PARTS:-table1 peers step_time orbit_throughput tests}  # a subset: PARTS="table1 peers" bash ...
run() {  # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  [[ " $PARTS " == *" $name "* ]] || return 0
  local start=$SECONDS
  timeout "$limit" "$@" > "$WORK/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - start)) s" | tee -a "$WORK/summary.txt"
  tail -n 30 "$WORK/$name.log"
}
run table1 100 python3 -m symvi_jax mnist --config configs/mnist_table1.yaml --data .devdata/mnist.npz \
  --ood-data .devdata/fashion_mnist.npz --out "$WORK/table1" --compile-workers "${COMPILE_WORKERS:-8}"
run peers 80 python3 benchmarks/peers.py --repeats 10 --json "$WORK/peers.json"
run step_time 150 python3 benchmarks/step_time.py --repeats 10 --json "$WORK/step_time.json"
run orbit_throughput 30 python3 benchmarks/orbit_throughput.py --repeats 5 --json "$WORK/orbit_throughput.json"
XLA_PYTHON_CLIENT_PREALLOCATE=false run tests 90 python3 -m pytest -q -p no:cacheprovider -n 8 \
  tests/test_identities_float64.py tests/test_permanent_float64.py tests/test_meanfield.py tests/test_objectives.py \
  tests/test_symmetry.py tests/test_proposals.py tests/test_vi.py
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/device.tar.gz" -C "$WORK" . && cp "$WORK/summary.txt" "$OUT/summary.txt"
fi
