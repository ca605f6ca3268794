// Entry points of the softmax family: check arguments once, allocate outputs, dispatch.
#include <pybind11/stl.h>

#include <climits>
#include <utility>

#include "../kernels/softmax.h"
#include "dispatch.h"

namespace convnet {
namespace {

// labels int32 (N,) on the scores' device, one per row.
void check_label_shape(const Tensor& labels, const Tensor& scores, const char* scores_name) {
  check_defined(labels, "labels");
  check_dtype(labels, DType::i32, "labels");
  check_dim(labels, 1, "labels");
  check_same_device(scores, scores_name, labels, "labels");
  CHECK_VALUE(labels.size(0) == scores.size(0), "'labels' has ", labels.size(0), " entries but '",
              scores_name, "' has ", scores.size(0), " rows");
}

void check_label_value(int64_t row, int32_t label, int64_t k) {
  CHECK_VALUE(label >= 0 && label < k, "label ", label, " at index ", row, " is out of range [0, ", k, ")");
}

// Every label in [0, k); on a GPU the labels are copied to the host to check (N ints).
void check_label_values(const Tensor& labels, int64_t k) {
  Tensor host = labels.to(Device{});
  const int32_t* l = host.data<int32_t>();
  for (int64_t i = 0; i < labels.size(0); ++i) check_label_value(i, l[i], k);
}

void check_scores(const Tensor& t, const char* name) {
  check_defined(t, name);
  check_dtype(t, DType::f32, name);
  check_dim(t, 2, name);
  CHECK_VALUE(t.size(0) > 0 && t.size(1) > 0, "'", name, "' must have at least one row and one class, got shape ",
              t.shape_str());
  // classes below INT_MAX by a block: the CUDA kernels' int column index steps by blockDim.x (<= 256)
  // past the last class, and must not wrap
  CHECK_VALUE(t.size(1) <= INT_MAX - 256 && t.size(0) <= INT64_MAX / t.size(1), "'", name, "' is too large: ",
              t.shape_str());
}

}  // namespace

std::pair<double, Tensor> softmax_cross_entropy(const Tensor& logits, const Tensor& labels) {
  OpScope op("softmax_cross_entropy");
  check_scores(logits, "logits");
  check_label_shape(labels, logits, "logits");
  Tensor probs = Tensor::empty_like(logits);
  // The kernel checks the values as it reads them (see csrc/kernels/softmax.h).
  SoftmaxFindings found{};
  CONVNET_DISPATCH(logits.device(), softmax_cross_entropy, logits.data<float>(), labels.data<int32_t>(),
                   probs.data<float>(), logits.size(0), logits.size(1), &found);
  if (found.bad_row >= 0) check_label_value(found.bad_row, found.bad_label, logits.size(1));
  check_no_nonfinite(found.nonfinite, "logits");
  return {found.mean_loss, probs};
}

Tensor softmax_cross_entropy_backward(const Tensor& probs, const Tensor& labels) {
  OpScope op("softmax_cross_entropy_backward");
  check_scores(probs, "probs");
  check_label_shape(labels, probs, "probs");
  check_label_values(labels, probs.size(1));
  Tensor dlogits = Tensor::empty_like(probs);
  CONVNET_DISPATCH(probs.device(), softmax_cross_entropy_backward, probs.data<float>(),
                   labels.data<int32_t>(), dlogits.data<float>(), probs.size(0), probs.size(1));
  return dlogits;
}

void register_softmax(py::module_& m) {
  m.def("softmax_cross_entropy", &softmax_cross_entropy, py::arg("logits"), py::arg("labels"),
        CONVNET_NOGIL);
  m.def("softmax_cross_entropy_backward", &softmax_cross_entropy_backward, py::arg("probs"),
        py::arg("labels"), CONVNET_NOGIL);
}

}  // namespace convnet
