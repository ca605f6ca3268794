// Entry points of the join family: channel concatenation / splitting between towers and
// in-place gradient accumulation, for the layer graph (convnet/graph.py).
#include <cstdint>

#include "../kernels/join.h"
#include <pybind11/stl.h>

#include "dispatch.h"

namespace convnet {
namespace {

// rows = product of the dims before `axis`; inner = product of the dims after it.
void outer_inner(const std::vector<int64_t>& shape, int axis, int64_t& rows, int64_t& inner) {
  rows = 1;
  inner = 1;
  for (int i = 0; i < axis; ++i) rows *= shape[i];
  for (size_t i = axis + 1; i < shape.size(); ++i) inner *= shape[i];
}

int normalise_axis(int axis, int dim) {
  CHECK_VALUE(axis >= -dim && axis < dim, "axis ", axis, " out of range for a ", dim, "-d tensor");
  return axis < 0 ? axis + dim : axis;
}

}  // namespace

Tensor add_(Tensor& a, const Tensor& b) {
  OpScope op("add_");
  check_dtype(a, DType::f32, "a");
  check_dtype(b, DType::f32, "b");
  check_same_device(a, "a", b, "b");
  check_shape(b, a.shape, "b");
  check_disjoint(a, "a", b, "b", true);
  CONVNET_DISPATCH(a.device(), add_inplace, a.data<float>(), b.data<float>(), a.numel());
  return a;
}

Tensor concat(const std::vector<Tensor>& xs, int axis) {
  OpScope op("concat");
  CHECK_VALUE(!xs.empty(), "needs at least one tensor");
  const Tensor& first = xs[0];
  check_dtype(first, DType::f32, "xs[0]");
  axis = normalise_axis(axis, first.dim());
  std::vector<int64_t> shape = first.shape;
  shape[axis] = 0;
  for (size_t k = 0; k < xs.size(); ++k) {
    const Tensor& x = xs[k];
    check_dtype(x, DType::f32, "xs[i]");
    check_same_device(first, "xs[0]", x, "xs[i]");
    CHECK_VALUE(x.dim() == first.dim(), "tensor ", k, " has shape ", x.shape_str(), ", tensor 0 ", first.shape_str());
    for (int d = 0; d < x.dim(); ++d)
      CHECK_VALUE(d == axis || x.shape[d] == first.shape[d], "tensor ", k, " has shape ", x.shape_str(),
                  ", tensor 0 ", first.shape_str(), ": they differ outside axis ", axis);
    CHECK_VALUE(x.shape[axis] <= INT64_MAX - shape[axis], "the sizes along axis ", axis, " overflow int64");
    shape[axis] += x.shape[axis];
  }
  Tensor y = Tensor::empty(shape, DType::f32, first.device());
  int64_t rows, inner;
  outer_inner(shape, axis, rows, inner);
  int64_t offset = 0;
  for (const Tensor& x : xs) {
    int64_t cols = x.shape[axis] * inner;
    CONVNET_DISPATCH(y.device(), copy_rows, x.data<float>(), cols, y.data<float>() + offset, shape[axis] * inner,
                     rows, cols);
    offset += cols;
  }
  return y;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int axis) {
  OpScope op("split");
  check_dtype(x, DType::f32, "x");
  axis = normalise_axis(axis, x.dim());
  int64_t total = 0;
  for (int64_t s : sizes) {
    CHECK_VALUE(s >= 0, "negative size ", s);
    // checked before adding: a sum past int64 wrapped (sizes of 2^63 - 1 on an empty tensor passed)
    CHECK_VALUE(s <= x.shape[axis] - total, "sizes sum to more than the ", x.shape[axis], " of axis ", axis, " of ",
                x.shape_str());
    total += s;
  }
  CHECK_VALUE(total == x.shape[axis], "sizes sum to ", total, " but axis ", axis, " of ", x.shape_str(), " has ",
              x.shape[axis]);
  int64_t rows, inner;
  outer_inner(x.shape, axis, rows, inner);
  std::vector<Tensor> out;
  int64_t offset = 0;
  for (int64_t s : sizes) {
    std::vector<int64_t> shape = x.shape;
    shape[axis] = s;
    Tensor y = Tensor::empty(shape, DType::f32, x.device());
    int64_t cols = s * inner;
    CONVNET_DISPATCH(x.device(), copy_rows, x.data<float>() + offset, x.shape[axis] * inner, y.data<float>(), cols,
                     rows, cols);
    offset += cols;
    out.push_back(y);
  }
  return out;
}

void register_join(py::module_& m) {
  m.def("add_", &add_, py::arg("a"), py::arg("b"), CONVNET_NOGIL);
  m.def("concat", &concat, py::arg("xs"), py::arg("axis"), CONVNET_NOGIL);
  m.def("split", &split, py::arg("x"), py::arg("sizes"), py::arg("axis"), CONVNET_NOGIL);
}

}  // namespace convnet
