#!/usr/bin/env bash
# The CUDA backend's tests without a GPU: builds convnet with CONVNET_CUDA=EMULATE (the CUDA sources
# compiled for the CPU against tools/cuda_emulator, every CUDA thread a fiber) in BUILD_DIR, copies
# the package and tests beside the module, and runs pytest there on the tests that touch CUDA
# (TEST_FILTER; empty runs every test), or on the pytest arguments given.
#   bash tools/emulate_cuda.sh                          # the CUDA tests, two emulated GPUs (~3 min)
#   CONVNET_EMU_ORDER=reverse bash tools/emulate_cuda.sh   # blocks and threads run last first
#   CONVNET_EMU_ORDER=random:7 bash tools/emulate_cuda.sh  # ... shuffled at each launch and barrier
#   CONVNET_NO_MEMORY_CACHING=1 bash tools/emulate_cuda.sh  # each tensor its own guarded allocation:
#                                                           # an access past one stops the run, named
#   bash tools/emulate_cuda.sh tests/test_lrn.py -k cuda   # some tests
# It checks the CUDA code's logic (index maps, barriers, shuffles, launch limits, host code,
# placements and peer copies), not its speed, and not what only hardware shows (see
# tools/cuda_emulator/cuda_runtime.h). Needs cmake, ninja and pybind11 in the active Python.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=$(mkdir -p "${BUILD_DIR:-build/emulated}" && cd "${BUILD_DIR:-build/emulated}" && pwd)
TEST_FILTER=${TEST_FILTER-"cuda or gpu or pinned or allocator"}
# A build folder configured from another checkout makes cmake stop ("does not match the source"):
# start it afresh instead.
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && \
   ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$(pwd)" "$BUILD_DIR/CMakeCache.txt"; then
  echo "emulate_cuda: $BUILD_DIR was configured from another source folder; rebuilding it"
  rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR"
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCONVNET_CUDA=EMULATE \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD_DIR/module" \
  -DPython_EXECUTABLE="$(command -v python)" \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}" >/dev/null
run="$BUILD_DIR/run"
rm -rf "$run" && mkdir -p "$run"
cp -r convnet tests tools benchmarks "$run/"
rm -f "$run"/convnet/_C*.so && cp "$BUILD_DIR"/module/_C*.so "$run/convnet/"
cd "$run"
python -c "import convnet; assert convnet._C.cuda_device_name(0).startswith('CUDA emulator'), 'not the emulated build'"
if [ $# -gt 0 ]; then
  exec python -m pytest -q --capture=sys "$@"
elif [ -n "$TEST_FILTER" ]; then
  exec python -m pytest -q --capture=sys tests -k "$TEST_FILTER"
else
  exec python -m pytest -q --capture=sys tests
fi
