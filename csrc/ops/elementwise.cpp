// Entry points of the elementwise family: check arguments once, allocate outputs, dispatch.
#include "../kernels/elementwise.h"
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
  check_dtype(dy, DType::f32, "dy");
  check_same_device(y, "y", dy, "dy");
  check_shape(dy, y.shape, "dy");
  Tensor dx = Tensor::empty_like(y);
  CONVNET_DISPATCH(y.device(), relu_backward, y.data<float>(), dy.data<float>(), dx.data<float>(), y.numel());
  return dx;
}

void register_elementwise(py::module_& m) {
  m.def("relu", &relu, py::arg("x"), CONVNET_NOGIL);
  m.def("relu_backward", &relu_backward, py::arg("y"), py::arg("dy"), CONVNET_NOGIL);
}

}  // namespace convnet
