// The one place an op goes from a device to a kernel: cpu::fn on the CPU, cuda::fn
// (with that GPU made current) on a GPU. Both twins have the same signature,
// declared once in csrc/kernels/<family>.h.
#pragma once
#include <pybind11/pybind11.h>

#include <atomic>
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
// A family's CUDA kernel variant: an integer in [0, count) from environment variable `env`, read
// once (the family keeps one switch, a function-local static, so at first use), `fallback` when
// unset; then settable through `setter` (the hidden _C.set_<family>_variant of the tests and
// benchmarks). `range` words the allowed values in both errors.
class VariantSwitch {
 public:
  VariantSwitch(const char* env, const char* setter, int count, int fallback, const char* range)
      : setter_(setter), count_(count), range_(range), value_(from_env(env, fallback)) {}
  int get() const { return value_.load(std::memory_order_relaxed); }
  void set(int variant) {
    CHECK_VALUE(variant >= 0 && variant < count_, setter_, ": variant must be ", range_, ", got ", variant);
    value_.store(variant, std::memory_order_relaxed);
  }

 private:
  int from_env(const char* env, int fallback) const {
    const char* s = std::getenv(env);
    if (!s || !*s) return fallback;
    char* end = nullptr;
    long x = std::strtol(s, &end, 10);
    CHECK_VALUE(*end == 0 && x >= 0 && x < count_, env, " must be ", range_, ", got '", s, "'");
    return (int)x;
  }
  const char* setter_;
  int count_;
  const char* range_;
  std::atomic<int> value_;  // after the fields from_env reads
};

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
