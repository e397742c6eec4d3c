#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a device run: fetches the wheels the lent GPU machine lacks
# (it has jax, flax, optax, chex, orbax, numpyro, but no distrax, tfp-nightly or blackjax and no
# internet) into .whl/, and copies the MNIST archive into .devdata/. Both folders are git-ignored
# and travel with `carry: [".whl", ".devdata"]` (see benchmarks/RESULTS.md, "GPU runs").
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >> .git/info/exclude
mkdir -p .whl .devdata
PY=${PYTHON:-python3}
for spec in distrax tfp-nightly dm-tree decorator gast blackjax; do
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
cp "${MNIST_NPZ:-../shared/data/mnist.npz}" .devdata/mnist.npz
cp "${FASHION_NPZ:-../shared/data/fashion_mnist.npz}" .devdata/fashion_mnist.npz
du -sh .whl .devdata
