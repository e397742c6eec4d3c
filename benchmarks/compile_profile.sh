#!/usr/bin/env bash
# Where XLA:CPU spends the compile of one width's Table 1 train program: `perf record` enabled only
# around `.compile()` (perf's control FIFO), samples summed by library and by LLVM / MLIR / XLA symbol.
#
#   bash benchmarks/compile_profile.sh [WIDTH]        (default 30; needs Debian's linux-perf)
set -euo pipefail
cd "$(dirname "$0")/.."
width="${1:-30}"
python="${PYTHON:-python}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/ctl" "$tmp/ack"
cat > "$tmp/compile.py" <<PY
import sys, time
sys.path.insert(0, "benchmarks")
import symvi_jax
from table1_compile import lowerings

lowered = lowerings(symvi_jax, $width)["train"]()
with open("$tmp/ctl", "w") as ctl, open("$tmp/ack") as ack:
    ctl.write("enable\n"); ctl.flush(); ack.readline()
    start = time.perf_counter()
    lowered.compile()
    seconds = time.perf_counter() - start
    ctl.write("disable\n"); ctl.flush(); ack.readline()
print(f"width $width train program: compiled in {seconds:.1f} s (under perf)")
PY
SYMVI_JAX_CACHE=off PYTHONPATH=. perf record -q -F 499 -D -1 --control "fifo:$tmp/ctl,$tmp/ack" \
    -o "$tmp/perf.data" "$python" "$tmp/compile.py"
perf report -i "$tmp/perf.data" --sort dso,sym --stdio 2>/dev/null | grep "%" | "$python" -c '
import collections, re, sys
by = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
    if dso != "libjax_common.so":
        by[dso] += pct
    elif "mlir::" in sym[:80]:
        by["libjax_common.so: MLIR"] += pct
    elif re.search(r"\b(xla|tsl|absl)::", sym[:80]):
        by["libjax_common.so: XLA / tsl / absl"] += pct
    elif "llvm::" in sym[:80] or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", sym):
        by["libjax_common.so: LLVM (and unqualified static functions)"] += pct
    else:
        by["libjax_common.so: other"] += pct
print("| where | share of samples |")
print("| --- | --- |")
for name, pct in by.most_common(8):
    print(f"| {name} | {pct:.1f}% |")
'
