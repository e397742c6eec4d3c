#!/bin/bash
cd /work/main
B="--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
run() { # name, env...
  name=$1; shift
  env "$@" PYTHONPATH=benchmarks .venv/bin/python benchmarks/suite_compile_time.py tests/test_vi.py tests/test_objectives.py --top 0 --json /tmp/p16/sct_$name.json > /tmp/p16/sct_$name.txt 2>&1
  echo "$name $(grep '\*\*all' /tmp/p16/sct_$name.txt)"
}
run base XLA_FLAGS="$B"
run unroll XLA_FLAGS="$B --xla_cpu_disable_loop_unrolling=true"
run nothunk XLA_FLAGS="$B --xla_cpu_use_thunk_runtime=false"
run nosched XLA_FLAGS="$B --xla_cpu_enable_concurrency_optimized_scheduler=false"
run nomof XLA_FLAGS="$B --xla_cpu_use_multi_output_fusion=false"
run tbloc XLA_FLAGS="$B" JAX_TRACEBACK_IN_LOCATIONS_LIMIT=0
run noregion XLA_FLAGS="$B --xla_cpu_copy_insertion_use_region_analysis=false"
run size XLA_FLAGS="$B --xla_cpu_optimize_for_size=true"
run base2 XLA_FLAGS="$B"
