#!/bin/bash
cd /work/main
B="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
F="tests/test_weight_symmetry.py tests/test_identities_float64.py tests/test_diagnostics.py"
run() { name=$1; shift
  env "$@" PYTHONPATH=benchmarks .venv/bin/python benchmarks/suite_compile_time.py $F --top 0 --json /tmp/p16/sct3_$name.json > /tmp/p16/sct3_$name.txt 2>&1
  echo "$name $(grep '\*\*all' /tmp/p16/sct3_$name.txt) $(grep -E 'passed|failed' /tmp/p16/sct3_$name.txt | tail -1)"; }
for r in 1 2 3; do
run base_$r XLA_FLAGS="$B"
run tbloc_$r XLA_FLAGS="$B" JAX_TRACEBACK_IN_LOCATIONS_LIMIT=0
done
