// Entry points of the conv family: check arguments once, fill ConvShape, allocate outputs,
// dispatch to the twins in csrc/kernels/conv.h (which trust the shape).
#include <pybind11/stl.h>

#include <optional>
#include <tuple>

#include "../kernels/conv.h"
#include "dispatch.h"

namespace convnet {

namespace {

constexpr int kConvVariants = 6;
// Variant 5 (variant 4 plus the FFT backward-filter for conv2-like shapes) measured fastest on an
// H200 (benchmarks/results/2026-11-27-h200-47382a3/bench-variants.txt: conv2 backward-filter
// 2.216 -> 1.158 ms, every other row within 2%) and passed every CUDA test there, under both
// variants. Variant 4 (the multistage cp.async k-loop) over 3: 2026-11-26-h200-84eeb79; variant 3
// (Winograd for conv3-5) and 2 over 0/1: benchmarks/results/NOTES-conv-cuda.md.
constexpr int kDefaultConvVariant = 5;

VariantSwitch& variant_switch() {
  static VariantSwitch s{"CONVNET_CONV_VARIANT", "set_conv_variant", kConvVariants, kDefaultConvVariant, "0 to 5"};
  return s;
}

// Checks x (n, c, h, w) and w (k, c/groups, r, s) and the conv parameters; returns the shape.
ConvShape conv_shape(const Tensor& x, const Tensor& w, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                     int64_t pad_w, int64_t groups) {
  check_defined(x, "x");
  check_defined(w, "w");
  check_dtype(x, DType::f32, "x");
  check_dtype(w, DType::f32, "w");
  check_dim(x, 4, "x");
  check_dim(w, 4, "w");
  check_same_device(x, "x", w, "w");
  CHECK_VALUE(stride_h >= 1 && stride_w >= 1, "stride must be >= 1, got (", stride_h, ", ", stride_w, ")");
  CHECK_VALUE(pad_h >= 0 && pad_w >= 0, "padding must be >= 0, got (", pad_h, ", ", pad_w, ")");
  CHECK_VALUE(stride_h < (1 << 30) && stride_w < (1 << 30) && pad_h < (1 << 30) && pad_w < (1 << 30),
              "stride (", stride_h, ", ", stride_w, ") or padding (", pad_h, ", ", pad_w, ") is absurdly large");
  CHECK_VALUE(groups >= 1, "groups must be >= 1, got ", groups);
  ConvShape s{};
  s.n = x.size(0), s.c = x.size(1), s.h = x.size(2), s.w = x.size(3);
  s.k = w.size(0), s.r = w.size(2), s.s = w.size(3);
  s.stride_h = stride_h, s.stride_w = stride_w, s.pad_h = pad_h, s.pad_w = pad_w, s.groups = groups;
  CHECK_VALUE(s.k >= 1 && w.size(1) >= 1 && s.r >= 1 && s.s >= 1, "'w' must have no zero-sized dimension, got shape ",
              w.shape_str());
  CHECK_VALUE(s.c % groups == 0 && s.k % groups == 0, "groups=", groups, " must divide both the input channels (",
              s.c, ") and the output channels (", s.k, ")");
  CHECK_VALUE(w.size(1) * groups == s.c, "'x' ", x.shape_str(), " has ", s.c, " channels but 'w' ", w.shape_str(),
              " with groups=", groups, " expects ", w.size(1) * groups, " (w is (out, in/groups, kh, kw))");
  const int64_t hp = s.h + 2 * pad_h, wp = s.w + 2 * pad_w;
  CHECK_VALUE(s.r <= hp && s.s <= wp, "kernel ", s.r, "x", s.s, " is larger than the padded input ", hp, "x", wp,
              " (input ", s.h, "x", s.w, ", padding (", pad_h, ", ", pad_w, "))");
  s.p = (hp - s.r) / stride_h + 1;
  s.q = (wp - s.s) / stride_w + 1;
  CHECK_VALUE(s.p >= 1 && s.q >= 1, "output size ", s.p, "x", s.q, " is empty");
  return s;
}

Tensor conv2d(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b, int64_t stride_h, int64_t stride_w,
              int64_t pad_h, int64_t pad_w, int64_t groups) {
  OpScope op("conv2d");
  ConvShape s = conv_shape(x, w, stride_h, stride_w, pad_h, pad_w, groups);
  if (b) {
    check_defined(*b, "b");
    check_dtype(*b, DType::f32, "b");
    check_same_device(x, "x", *b, "b");
    check_shape(*b, {s.k}, "b");
  }
  Tensor y = Tensor::empty({s.n, s.k, s.p, s.q}, DType::f32, x.device());
  if (s.n > 0)
    CONVNET_DISPATCH(x.device(), conv2d, s, x.data<float>(), w.data<float>(), b ? b->data<float>() : nullptr,
                     y.data<float>());
  return y;
}

// input_grad / weight_grad = false skip that gradient (returned as None): the first layer
// of a net never needs the gradient of its images, the costliest part of conv1's backward.
std::tuple<std::optional<Tensor>, std::optional<Tensor>, std::optional<Tensor>> conv2d_backward(
    const Tensor& x, const Tensor& w, const Tensor& dy, int64_t stride_h, int64_t stride_w, int64_t pad_h,
    int64_t pad_w, int64_t groups, bool input_grad, bool weight_grad) {
  OpScope op("conv2d_backward");
  ConvShape s = conv_shape(x, w, stride_h, stride_w, pad_h, pad_w, groups);
  check_defined(dy, "dy");
  check_dtype(dy, DType::f32, "dy");
  check_same_device(x, "x", dy, "dy");
  check_shape(dy, {s.n, s.k, s.p, s.q}, "dy");
  std::optional<Tensor> dx, dw, db;
  if (input_grad) dx = Tensor::empty_like(x);
  if (weight_grad) {
    dw = Tensor::empty_like(w);
    db = Tensor::empty({s.k}, DType::f32, x.device());
  }
  if (s.n == 0) {  // an empty batch: no input gradient, zero weight and bias gradients
    if (weight_grad) {
      dw = Tensor::zeros(w.shape, DType::f32, x.device());
      db = Tensor::zeros({s.k}, DType::f32, x.device());
    }
    return {dx, dw, db};
  }
  if (input_grad)
    CONVNET_DISPATCH(x.device(), conv2d_backward_data, s, w.data<float>(), dy.data<float>(), dx->data<float>());
  if (weight_grad)
    CONVNET_DISPATCH(x.device(), conv2d_backward_filter, s, x.data<float>(), dy.data<float>(), dw->data<float>(),
                     db->data<float>());
  return {dx, dw, db};
}

}  // namespace

int conv_variant() { return variant_switch().get(); }

void set_conv_variant(int variant) { variant_switch().set(variant); }

void register_conv(py::module_& m) {
  m.def("conv2d", &conv2d, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("pad_h"), py::arg("pad_w"), py::arg("groups"), CONVNET_NOGIL);
  m.def("conv2d_backward", &conv2d_backward, py::arg("x"), py::arg("w"), py::arg("dy"), py::arg("stride_h"),
        py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("groups"), py::arg("input_grad") = true,
        py::arg("weight_grad") = true, CONVNET_NOGIL);
  // Hidden: the CUDA GEMM variant (CONVNET_CONV_VARIANT), so tests can run every variant.
  m.def("conv_variant", &conv_variant);
  m.def("set_conv_variant", &set_conv_variant, py::arg("variant"));
}

}  // namespace convnet
