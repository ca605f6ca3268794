// Entry points of the max-pool family: check arguments once, allocate outputs, dispatch.
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../kernels/pool.h"
#include "dispatch.h"

namespace convnet {
namespace {

constexpr int kPoolVariants = 3;
// Variant 0 is the default: measured (H200, results 2026-11-27-h200-ed1aee4); variants 1 and 2 are not yet.
constexpr int kDefaultPoolVariant = 0;

VariantSwitch& variant_switch() {
  static VariantSwitch s{"CONVNET_POOL_VARIANT", "set_pool_variant", kPoolVariants, kDefaultPoolVariant, "0, 1 or 2"};
  return s;
}

PoolShape pool_shape(const Tensor& x, int64_t size, int64_t stride) {
  check_defined(x, "x");
  check_dtype(x, DType::f32, "x");
  check_dim(x, 4, "x");
  CHECK_VALUE(size >= 1, "size must be >= 1, got ", size);
  CHECK_VALUE(stride >= 1, "stride must be >= 1, got ", stride);
  CHECK_VALUE(size <= x.size(2) && size <= x.size(3), "window size ", size, " is larger than the input ",
              x.shape_str());
  CHECK_VALUE(x.size(2) * x.size(3) < ((int64_t)1 << 31), "planes of 2^31 or more elements are not supported, got ",
              x.shape_str());
  // The kernels index rows and columns in int and step them by up to 256 (CUDA) at a time.
  CHECK_VALUE(x.size(2) < ((int64_t)1 << 30) && x.size(3) < ((int64_t)1 << 30),
              "heights and widths of 2^30 or more are not supported, got ", x.shape_str());
  // A stride past the plane gives one window each way, exactly as a stride of the plane's size
  // does: clamped so that the kernels' int arithmetic (and the CPU's per-stride buffers) stay small.
  stride = std::min(stride, std::max(x.size(2), x.size(3)));
  PoolShape sh{x.size(0), x.size(1), x.size(2), x.size(3), size, stride, 0, 0};
  sh.p = (sh.h - size) / stride + 1;
  sh.q = (sh.w - size) / stride + 1;
  return sh;
}

}  // namespace

// return_indices: also each window's argmax (int32, shaped like y; kernels/pool.h), for
// max_pool_backward(..., indices) in training. Returns (y, indices or None).
std::tuple<Tensor, std::optional<Tensor>> max_pool(const Tensor& x, int64_t size, int64_t stride,
                                                   bool return_indices) {
  OpScope op("max_pool");
  PoolShape sh = pool_shape(x, size, stride);
  Tensor y = Tensor::empty({sh.n, sh.c, sh.p, sh.q}, DType::f32, x.device());
  std::optional<Tensor> indices;
  if (return_indices) indices = Tensor::empty({sh.n, sh.c, sh.p, sh.q}, DType::i32, x.device());
  if (y.numel() > 0)
    CONVNET_DISPATCH(x.device(), max_pool, sh, x.data<float>(), y.data<float>(),
                     indices ? indices->data<int32_t>() : nullptr);
  return {y, indices};
}

// With indices (from max_pool(..., return_indices=True)), x and y are only checked for shape and
// device (y may be None) and the argmax is not recomputed.
Tensor max_pool_backward(const Tensor& x, const std::optional<Tensor>& y, const Tensor& dy, int64_t size,
                         int64_t stride, const std::optional<Tensor>& indices) {
  OpScope op("max_pool_backward");
  PoolShape sh = pool_shape(x, size, stride);
  CHECK_VALUE(y || indices, "'y' may be None only when 'indices' are given");
  if (y) check_matches(*y, "y", DType::f32, {sh.n, sh.c, sh.p, sh.q}, x, "x");
  check_matches(dy, "dy", DType::f32, {sh.n, sh.c, sh.p, sh.q}, x, "x");
  if (indices) check_matches(*indices, "indices", DType::i32, {sh.n, sh.c, sh.p, sh.q}, x, "x");
  Tensor dx = Tensor::empty_like(x);
  if (dx.numel() == 0) return dx;
  if (indices) {
    int64_t invalid = 0;
    CONVNET_DISPATCH(x.device(), max_pool_backward_indices, sh, indices->data<int32_t>(), dy.data<float>(),
                     dx.data<float>(), &invalid);
    CHECK_VALUE(invalid == 0, invalid, " of the indices are not inside their windows (indices must come from ",
                "max_pool(..., return_indices=True) with the same x, size and stride)");
  } else {
    CONVNET_DISPATCH(x.device(), max_pool_backward, sh, x.data<float>(), y->data<float>(), dy.data<float>(),
                     dx.data<float>());
  }
  return dx;
}

int pool_variant() { return variant_switch().get(); }

void set_pool_variant(int variant) { variant_switch().set(variant); }

void register_pool(py::module_& m) {
  m.def("max_pool", &max_pool, py::arg("x"), py::arg("size"), py::arg("stride"), py::arg("return_indices") = false,
        CONVNET_NOGIL);
  m.def("max_pool_backward", &max_pool_backward, py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("size"),
        py::arg("stride"), py::arg("indices") = py::none(), CONVNET_NOGIL);
  // Hidden: the CUDA max-pool variant (CONVNET_POOL_VARIANT), so tests and benchmarks can run each.
  m.def("pool_variant", &pool_variant);
  m.def("set_pool_variant", &set_pool_variant, py::arg("variant"));
}

}  // namespace convnet
