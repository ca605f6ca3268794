// Entry points of the fully-connected family: check arguments once, allocate outputs,
// dispatch to the twins in csrc/kernels/linear.h.
#include <pybind11/stl.h>

#include <optional>
#include <tuple>

#include "../kernels/linear.h"
#include "dispatch.h"

namespace convnet {

namespace {

// Checks x (n, in) and w (out, in).
void check_linear(const Tensor& x, const Tensor& w) {
  check_defined(x, "x");
  check_defined(w, "w");
  check_dtype(x, DType::f32, "x");
  check_dtype(w, DType::f32, "w");
  check_dim(x, 2, "x");
  check_dim(w, 2, "w");
  check_same_device(x, "x", w, "w");
  CHECK_VALUE(w.size(0) >= 1 && w.size(1) >= 1, "'w' must have no zero-sized dimension, got shape ", w.shape_str());
  CHECK_VALUE(x.size(1) == w.size(1), "'x' ", x.shape_str(), " has ", x.size(1), " features but 'w' ", w.shape_str(),
              " expects ", w.size(1), " (w is (out, in))");
}

Tensor linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b) {
  OpScope op("linear");
  check_linear(x, w);
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  if (b) {
    check_defined(*b, "b");
    check_dtype(*b, DType::f32, "b");
    check_same_device(x, "x", *b, "b");
    check_shape(*b, {out}, "b");
  }
  Tensor y = Tensor::empty({n, out}, DType::f32, x.device());
  if (n > 0)
    CONVNET_DISPATCH(x.device(), linear, n, in, out, x.data<float>(), w.data<float>(),
                     b ? b->data<float>() : nullptr, y.data<float>());
  return y;
}

std::tuple<Tensor, Tensor, Tensor> linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy) {
  OpScope op("linear_backward");
  check_linear(x, w);
  const int64_t n = x.size(0), in = x.size(1), out = w.size(0);
  check_defined(dy, "dy");
  check_dtype(dy, DType::f32, "dy");
  check_same_device(x, "x", dy, "dy");
  check_shape(dy, {n, out}, "dy");
  Tensor dx = Tensor::empty_like(x);
  if (n == 0) {  // an empty batch: no input gradient, zero weight and bias gradients
    return {dx, Tensor::zeros(w.shape, DType::f32, x.device()), Tensor::zeros({out}, DType::f32, x.device())};
  }
  Tensor dw = Tensor::empty_like(w);
  Tensor db = Tensor::empty({out}, DType::f32, x.device());
  CONVNET_DISPATCH(x.device(), linear_backward, n, in, out, x.data<float>(), w.data<float>(), dy.data<float>(),
                   dx.data<float>(), dw.data<float>(), db.data<float>());
  return {dx, dw, db};
}

}  // namespace

void register_linear(py::module_& m) {
  m.def("linear", &linear, py::arg("x"), py::arg("w"), py::arg("b"), CONVNET_NOGIL);
  m.def("linear_backward", &linear_backward, py::arg("x"), py::arg("w"), py::arg("dy"), CONVNET_NOGIL);
}

}  // namespace convnet
