// Entry points of the elementwise family: check arguments once, allocate outputs, dispatch.
#include <pybind11/stl.h>

#include <cmath>
#include <utility>

#include "../kernels/elementwise.h"
#include "../kernels/random.h"
#include "dispatch.h"

namespace convnet {

Tensor relu(const Tensor& x) {
  OpScope op("relu");
  check_defined(x, "x");
  check_dtype(x, DType::f32, "x");
  Tensor y = Tensor::empty_like(x);
  CONVNET_DISPATCH(x.device(), relu, x.data<float>(), y.data<float>(), x.numel());
  return y;
}

Tensor relu_backward(const Tensor& y, const Tensor& dy) {
  OpScope op("relu_backward");
  check_dtype(y, DType::f32, "y");
  check_matches(dy, "dy", DType::f32, y.shape, y, "y");
  Tensor dx = Tensor::empty_like(y);
  CONVNET_DISPATCH(y.device(), relu_backward, y.data<float>(), dy.data<float>(), dx.data<float>(), y.numel());
  return dx;
}

static void check_drop_probability(double p) {
  CHECK_VALUE(p >= 0.0 && p <= random::kMaxDropProbability,
              "drop probability p must be in [0, 1 - 2^-24] (the draws have 24 bits: past that none is kept), got ", p);
}

std::pair<Tensor, Tensor> dropout(const Tensor& x, double p, int64_t seed) {
  OpScope op("dropout");
  check_defined(x, "x");
  check_dtype(x, DType::f32, "x");
  check_drop_probability(p);
  Tensor y = Tensor::empty_like(x);
  Tensor mask = Tensor::empty(x.shape, DType::u8, x.device());
  CONVNET_DISPATCH(x.device(), dropout, x.data<float>(), y.data<float>(), mask.data<uint8_t>(),
                   x.numel(), p, (uint64_t)seed);
  return {y, mask};
}

Tensor dropout_backward(const Tensor& dy, const Tensor& mask, double p) {
  OpScope op("dropout_backward");
  check_defined(dy, "dy");
  check_dtype(dy, DType::f32, "dy");
  check_matches(mask, "mask", DType::u8, dy.shape, dy, "dy");
  check_drop_probability(p);
  Tensor dx = Tensor::empty_like(dy);
  CONVNET_DISPATCH(dy.device(), dropout_backward, dy.data<float>(), mask.data<uint8_t>(),
                   dx.data<float>(), dy.numel(), p);
  return dx;
}

void sgd_update(const Tensor& w, const Tensor& dw, const Tensor& v, double lr, double momentum,
                double weight_decay) {
  OpScope op("sgd_update");
  check_defined(w, "w");
  check_dtype(w, DType::f32, "w");
  check_matches(dw, "dw", DType::f32, w.shape, w, "w");
  check_matches(v, "v", DType::f32, w.shape, w, "w");
  check_disjoint(w, "w", dw, "dw");  // w and v are updated in place, from all three
  check_disjoint(w, "w", v, "v");
  check_disjoint(dw, "dw", v, "v");
  // as float32, the kernels' type: a NaN or overflowing rate would silently ruin every weight
  CHECK_VALUE(std::isfinite((float)lr) && std::isfinite((float)momentum) && std::isfinite((float)weight_decay),
              "lr, momentum and weight_decay must be finite float32 values, got ", lr, ", ", momentum, ", ",
              weight_decay);
  CONVNET_DISPATCH(w.device(), sgd_update, w.data<float>(), dw.data<float>(), v.data<float>(),
                   w.numel(), (float)lr, (float)momentum, (float)weight_decay);
}

void register_elementwise(py::module_& m) {
  m.def("relu", &relu, py::arg("x"), CONVNET_NOGIL);
  m.def("relu_backward", &relu_backward, py::arg("y"), py::arg("dy"), CONVNET_NOGIL);
  m.def("dropout", &dropout, py::arg("x"), py::arg("p"), py::arg("seed"), CONVNET_NOGIL);
  m.attr("max_drop_probability") = random::kMaxDropProbability;  // for the dropout layer's early check
  m.def("dropout_backward", &dropout_backward, py::arg("dy"), py::arg("mask"), py::arg("p"),
        CONVNET_NOGIL);
  m.def("sgd_update", &sgd_update, py::arg("w"), py::arg("dw"), py::arg("v"), py::arg("lr"),
        py::arg("momentum"), py::arg("weight_decay"), CONVNET_NOGIL);
}

}  // namespace convnet
