// Entry points of the softmax family: check arguments once, allocate outputs, dispatch.
#include <pybind11/stl.h>

#include <climits>
#include <utility>

#include "../kernels/softmax.h"
#include "dispatch.h"

namespace convnet {
namespace {

// labels int32 (N,) on the logits' device with every value in [0, k); on a GPU the labels
// are copied to the host to check (N ints: cheap next to the kernels).
void check_labels(const Tensor& labels, const Tensor& scores, const char* scores_name) {
  check_defined(labels, "labels");
  check_dtype(labels, DType::i32, "labels");
  check_dim(labels, 1, "labels");
  check_same_device(scores, scores_name, labels, "labels");
  const int64_t n = scores.size(0), k = scores.size(1);
  CHECK_VALUE(labels.size(0) == n, "'labels' has ", labels.size(0), " entries but '", scores_name,
              "' has ", n, " rows");
  Tensor host = labels.to(Device{});
  const int32_t* l = host.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    CHECK_VALUE(l[i] >= 0 && l[i] < k, "label ", l[i], " at index ", i, " is out of range [0, ", k,
                ")");
}

void check_scores(const Tensor& t, const char* name) {
  check_defined(t, name);
  check_dtype(t, DType::f32, name);
  check_dim(t, 2, name);
  CHECK_VALUE(t.size(0) > 0 && t.size(1) > 0, "'", name, "' must have at least one row and one class, got shape ",
              t.shape_str());
  CHECK_VALUE(t.size(1) <= INT_MAX && t.size(0) <= INT64_MAX / t.size(1), "'", name, "' is too large: ",
              t.shape_str());
}

}  // namespace

std::pair<double, Tensor> softmax_cross_entropy(const Tensor& logits, const Tensor& labels) {
  OpScope op("softmax_cross_entropy");
  check_scores(logits, "logits");
  check_labels(labels, logits, "logits");
  check_finite(logits, "logits");
  Tensor probs = Tensor::empty_like(logits);
  double loss = 0.0;
  CONVNET_DISPATCH(logits.device(), softmax_cross_entropy, logits.data<float>(), labels.data<int32_t>(),
                   probs.data<float>(), logits.size(0), logits.size(1), &loss);
  return {loss, probs};
}

Tensor softmax_cross_entropy_backward(const Tensor& probs, const Tensor& labels) {
  OpScope op("softmax_cross_entropy_backward");
  check_scores(probs, "probs");
  check_labels(labels, probs, "probs");
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
