// The one place an op goes from a device to a kernel: cpu::fn on the CPU, cuda::fn
// (with that GPU made current) on a GPU. Both twins have the same signature,
// declared once in csrc/kernels/<family>.h.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdlib>

#include "../core/device.h"
#include "../core/tensor.h"

#ifdef CONVNET_WITH_CUDA
#define CONVNET_DISPATCH(device, fn, ...)          \
  do {                                             \
    ::convnet::Device dispatch_device_ = (device); \
    if (dispatch_device_.is_cuda()) {              \
      ::convnet::DeviceGuard guard_(dispatch_device_); \
      ::convnet::cuda::fn(__VA_ARGS__);            \
    } else {                                       \
      ::convnet::cpu::fn(__VA_ARGS__);             \
    }                                              \
  } while (0)
#else
#define CONVNET_DISPATCH(device, fn, ...) \
  do {                                    \
    (void)(device);                       \
    ::convnet::cpu::fn(__VA_ARGS__);      \
  } while (0)
#endif

// Kernels run without the GIL, so two towers driven from two Python threads overlap.
#define CONVNET_NOGIL py::call_guard<py::gil_scoped_release>()

namespace py = pybind11;

namespace convnet {
// A family's CUDA kernel variant from environment variable `env` (read by the caller once, at
// first use): an integer in [0, count), `fallback` when unset; `range` words the allowed values.
inline int variant_from_env(const char* env, int count, int fallback, const char* range) {
  const char* s = std::getenv(env);
  if (!s || !*s) return fallback;
  char* end = nullptr;
  long x = std::strtol(s, &end, 10);
  CHECK_VALUE(*end == 0 && x >= 0 && x < count, env, " must be ", range, ", got '", s, "'");
  return (int)x;
}

// One per op family (csrc/ops/<family>.cpp); called from bindings.cpp.
void register_elementwise(py::module_& m);
void register_lrn(py::module_& m);
void register_pool(py::module_& m);
void register_softmax(py::module_& m);
void register_conv(py::module_& m);
void register_linear(py::module_& m);
void register_augment(py::module_& m);
void register_join(py::module_& m);  // layer-graph plumbing (csrc/ops/join.cpp)
}  // namespace convnet
