#!/usr/bin/env bash
# The CPU kernels built for instruction sets other than this machine's. pip compiles the package
# with -march=native where it is installed, so on a machine without AVX-512 the AVX2 code (and on
# one without AVX2 the plain C++) is what runs; CI's machines have AVX-512, so this builds each
# -march in MARCHES (default: x86-64-v3 = AVX2 + FMA, and x86-64 = SSE2 only) CPU-only in a
# temporary folder and runs the tests of the ops and the net there. Needs cmake, ninja and
# pybind11 in the active Python (pip install cmake ninja pybind11).
set -euo pipefail
cd "$(dirname "$0")/.."
MARCHES=${MARCHES:-"x86-64-v3 x86-64"}
TESTS=${TESTS:-"tests/test_conv.py tests/test_linear.py tests/test_pool.py tests/test_lrn.py tests/test_elementwise.py tests/test_softmax.py tests/test_augment.py tests/test_join.py tests/test_graph.py"}
for march in $MARCHES; do
  dir=$(mktemp -d)
  cp -r convnet tests "$dir/"
  rm -f "$dir"/convnet/_C*.so
  cmake -S . -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONVNET_CUDA=OFF -DCONVNET_NATIVE=OFF \
    -DCMAKE_CXX_FLAGS="-march=$march" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$dir/convnet" \
    -DPython_EXECUTABLE="$(command -v python)" \
    -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
  cmake --build "$dir/build" -j "${JOBS:-2}" >/dev/null
  echo "== -march=$march"
  (cd "$dir" && python -m pytest -q $TESTS)
  rm -rf "$dir"
done
