#!/bin/bash
cd /work/main
B="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
run() { name=$1; shift
  env "$@" PYTHONPATH=benchmarks .venv/bin/python benchmarks/suite_compile_time.py tests/test_vi.py tests/test_objectives.py --top 0 --json /tmp/p16/sct_$name.json > /tmp/p16/sct_$name.txt 2>&1
  echo "$name $(grep '\*\*all' /tmp/p16/sct_$name.txt) $(tail -1 /tmp/p16/sct_$name.txt | cut -c1-60)"; }
for r in 1 2; do
run tbloc_$r XLA_FLAGS="$B" JAX_TRACEBACK_IN_LOCATIONS_LIMIT=0
run base_$r XLA_FLAGS="$B"
done
