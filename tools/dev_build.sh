#!/usr/bin/env bash
# In-place developer build: compiles convnet/_C*.so next to the Python sources, so
# `python -m pytest` runs from the checkout without reinstalling. BUILD_DIR and
# CONVNET_CUDA (AUTO/ON/OFF) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build/dev}
# The module is linked in the build folder and renamed into convnet/: linked in place, it was
# rewritten under processes that had it loaded (tests, a training run), which then crashed.
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$PWD/$BUILD_DIR/module" \
  -DPython_EXECUTABLE="$(command -v python3)" \
  -Dpybind11_DIR="$(python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DCONVNET_CUDA="${CONVNET_CUDA:-AUTO}" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "${JOBS:-2}"
for built in "$BUILD_DIR"/module/_C*.so; do
  dest="convnet/$(basename "$built")"
  if ! cmp -s "$built" "$dest"; then
    cp "$built" "$dest.tmp$$" && mv -f "$dest.tmp$$" "$dest"
  fi
done
