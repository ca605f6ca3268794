// Twin kernels of the softmax family: each is defined once in csrc/cpu/softmax.cpp (namespace
// cpu) and once in csrc/cuda/softmax.cu (namespace cuda), same signature.
// Kernels trust their arguments: csrc/ops/softmax.cpp has checked shapes, finiteness and that
// every label is in [0, k).
#pragma once
#include <cstdint>

#define CONVNET_SOFTMAX_TWINS                                                                 \
  /* probs = row-wise softmax of logits (n, k); *mean_loss (host memory) = the mean over    \
     rows of logsumexp(row) - row[label], summed in a fixed order (deterministic). */         \
  void softmax_cross_entropy(const float* logits, const int32_t* labels, float* probs,       \
                             int64_t n, int64_t k, double* mean_loss);                        \
  /* dlogits = (probs - onehot(labels)) / n */                                                \
  void softmax_cross_entropy_backward(const float* probs, const int32_t* labels, float* dlogits, \
                                      int64_t n, int64_t k);

namespace convnet::cpu { CONVNET_SOFTMAX_TWINS }
namespace convnet::cuda { CONVNET_SOFTMAX_TWINS }
#undef CONVNET_SOFTMAX_TWINS
