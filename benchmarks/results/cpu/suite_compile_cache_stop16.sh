#!/bin/bash
cd /work/main
FILES="tests/test_identities_float64.py tests/test_importance_gradient_float64.py tests/test_meanfield.py tests/test_weight_symmetry.py tests/test_orbit_precision.py tests/test_vi.py tests/test_hyper.py tests/test_symmetry.py tests/test_diagnostics.py tests/test_objectives.py"
for rep in 1 2; do
  s=$(date +%s.%N); .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider $FILES > /tmp/p16/exp_nocache_$rep.txt 2>&1; e=$(date +%s.%N)
  echo "nocache $rep $(echo "$e - $s" | bc) $(tail -1 /tmp/p16/exp_nocache_$rep.txt)"
  d=$(mktemp -d)
  s=$(date +%s.%N); JAX_COMPILATION_CACHE_DIR=$d JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider $FILES > /tmp/p16/exp_cache_$rep.txt 2>&1; e=$(date +%s.%N)
  echo "cache $rep $(echo "$e - $s" | bc) $(tail -1 /tmp/p16/exp_cache_$rep.txt) entries=$(ls $d | wc -l) size=$(du -sh $d | cut -f1)"
  rm -rf $d
done
