// Entry points of the local response normalisation family: check arguments once,
// allocate outputs, dispatch.
#include <cmath>

#include "../kernels/lrn.h"
#include "dispatch.h"

namespace convnet {
namespace {

LrnShape lrn_shape(const Tensor& x, int64_t size, double alpha, double beta, double k) {
  check_defined(x, "x");
  check_dtype(x, DType::f32, "x");
  check_dim(x, 4, "x");
  CHECK_VALUE(size >= 1 && size % 2 == 1, "size must be an odd integer >= 1, got ", size);
  CHECK_VALUE(std::isfinite(alpha) && alpha >= 0, "alpha must be finite and >= 0, got ", alpha);
  CHECK_VALUE(std::isfinite(beta), "beta must be finite, got ", beta);
  CHECK_VALUE(std::isfinite(k) && k > 0, "k must be finite and > 0, got ", k);
  return LrnShape{x.size(0), x.size(1), x.size(2) * x.size(3), size, (float)alpha, (float)beta, (float)k};
}

}  // namespace

Tensor lrn(const Tensor& x, int64_t size, double alpha, double beta, double k) {
  OpScope op("lrn");
  LrnShape sh = lrn_shape(x, size, alpha, beta, k);
  Tensor y = Tensor::empty_like(x);
  if (x.numel() > 0) CONVNET_DISPATCH(x.device(), lrn, sh, x.data<float>(), y.data<float>());
  return y;
}

Tensor lrn_backward(const Tensor& x, const Tensor& y, const Tensor& dy, int64_t size, double alpha,
                    double beta, double k) {
  OpScope op("lrn_backward");
  LrnShape sh = lrn_shape(x, size, alpha, beta, k);
  check_matches(y, "y", DType::f32, x.shape, x, "x");
  check_matches(dy, "dy", DType::f32, x.shape, x, "x");
  Tensor dx = Tensor::empty_like(x);
  if (x.numel() > 0) CONVNET_DISPATCH(x.device(), lrn_backward, sh, x.data<float>(), dy.data<float>(), dx.data<float>());
  return dx;
}

void register_lrn(py::module_& m) {
  m.def("lrn", &lrn, py::arg("x"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        CONVNET_NOGIL);
  m.def("lrn_backward", &lrn_backward, py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("size"),
        py::arg("alpha"), py::arg("beta"), py::arg("k"), CONVNET_NOGIL);
}

}  // namespace convnet
