#!/usr/bin/env bash
# In-place developer build: compiles convnet/_C*.so next to the Python sources, so
# `python -m pytest` runs from the checkout without reinstalling. BUILD_DIR and
# CONVNET_CUDA (AUTO/ON/OFF) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/convnet" \
  -DPython_EXECUTABLE="$(command -v python3)" \
  -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DCONVNET_CUDA="${CONVNET_CUDA:-AUTO}" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
