// Twin kernels of the elementwise family: each is defined once in csrc/cpu/elementwise.cpp
// (namespace cpu) and once in csrc/cuda/elementwise.cu (namespace cuda), same signature.
// Kernels trust their arguments: csrc/ops/elementwise.cpp has checked them.
#pragma once
#include <cstdint>

#define CONVNET_ELEMENTWISE_TWINS                                                          \
  void relu(const float* x, float* y, int64_t n);                                          \
  void relu_backward(const float* y, const float* dy, float* dx, int64_t n);               \
  /* mask[i] = 1 if kept (random::uniform24(key(seed), i) >= threshold(p)), y = x*mask/(1-p) */ \
  void dropout(const float* x, float* y, uint8_t* mask, int64_t n, double p, uint64_t seed); \
  void dropout_backward(const float* dy, const uint8_t* mask, float* dx, int64_t n, double p); \
  /* in place: v = momentum*v - weight_decay*lr*w - lr*dw; w = w + v */                   \
  void sgd_update(float* w, const float* dw, float* v, int64_t n, float lr, float momentum,  \
                  float weight_decay);

namespace convnet::cpu { CONVNET_ELEMENTWISE_TWINS }
namespace convnet::cuda { CONVNET_ELEMENTWISE_TWINS }
#undef CONVNET_ELEMENTWISE_TWINS
