// Twin kernels of the softmax family: each is defined once in csrc/cpu/softmax.cpp (namespace
// cpu) and once in csrc/cuda/softmax.cu (namespace cuda), same signature.
// csrc/ops/softmax.cpp has checked shapes and devices. The forward checks the values itself,
// in the pass that reads them, and reports what it found (a GPU then needs one round trip per
// call, not one for the labels, one for finiteness and one for the loss); the backward trusts
// that every label is in [0, k).
#pragma once
#include <cstdint>

namespace convnet {
// What softmax_cross_entropy found in its inputs; the loss is meaningless unless both are clean.
struct SoftmaxFindings {
  double mean_loss;
  int64_t nonfinite;  // NaN or infinite logits
  int64_t bad_row;    // the first row whose label is outside [0, k), or -1
  int32_t bad_label;  // that row's label
};
}  // namespace convnet

#define CONVNET_SOFTMAX_TWINS                                                                 \
  /* probs = row-wise softmax of logits (n, k); found (host memory): the mean over rows of  \
     logsumexp(row) - row[label], summed in a fixed order (deterministic), and the checks. */ \
  void softmax_cross_entropy(const float* logits, const int32_t* labels, float* probs,       \
                             int64_t n, int64_t k, SoftmaxFindings* found);                   \
  /* dlogits = (probs - onehot(labels)) / n */                                                \
  void softmax_cross_entropy_backward(const float* probs, const int32_t* labels, float* dlogits, \
                                      int64_t n, int64_t k);

namespace convnet::cpu { CONVNET_SOFTMAX_TWINS }
namespace convnet::cuda { CONVNET_SOFTMAX_TWINS }
#undef CONVNET_SOFTMAX_TWINS
