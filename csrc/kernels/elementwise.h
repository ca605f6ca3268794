// Twin kernels of the elementwise family: each is defined once in csrc/cpu/elementwise.cpp
// (namespace cpu) and once in csrc/cuda/elementwise.cu (namespace cuda), same signature.
// Kernels trust their arguments: csrc/ops/elementwise.cpp has checked them.
#pragma once
#include <cstdint>

#define CONVNET_ELEMENTWISE_TWINS                                   \
  void relu(const float* x, float* y, int64_t n);                   \
  void relu_backward(const float* y, const float* dy, float* dx, int64_t n);

namespace convnet::cpu { CONVNET_ELEMENTWISE_TWINS }
namespace convnet::cuda { CONVNET_ELEMENTWISE_TWINS }
#undef CONVNET_ELEMENTWISE_TWINS
