// Twin kernels of the local response normalisation family (csrc/cpu/lrn.cpp, csrc/cuda/lrn.cu).
// Dense NCHW float32 viewed as (n, c, hw). The paper's cross-channel form, alpha not divided by size:
//   s_i = k + alpha * sum_{j=max(0,i-size/2)}^{min(c-1,i+size/2)} x_j^2,   y_i = x_i * s_i^-beta.
// Kernels trust their arguments: csrc/ops/lrn.cpp has checked them (size odd >= 1, k > 0).
#pragma once
#include <cstdint>

namespace convnet {
struct LrnShape {
  int64_t n, c, hw;  // batch, channels, height * width
  int64_t size;      // window length across channels (odd)
  float alpha, beta, k;
};
// The CUDA kernels used for size <= 9 (csrc/cuda/lrn.cu): 0 the per-channel ring kernels, 1 the
// channel-block kernels, 2 (default) the ring forward and the channel-block backward.
// CONVNET_LRN_VARIANT read once from the environment, or set_lrn_variant (tests). The CPU twins
// ignore it.
int lrn_variant();
void set_lrn_variant(int variant);
}  // namespace convnet

#define CONVNET_LRN_TWINS                                                                   \
  void lrn(const LrnShape& sh, const float* x, float* y);                                   \
  /* dx = dy_i s_i^-beta - 2 alpha beta x_i sum_{j: i in window(j)} dy_j x_j s_j^(-beta-1); \
     s is recomputed from x, so y is not read (the entry point checks its shape) */          \
  void lrn_backward(const LrnShape& sh, const float* x, const float* dy, float* dx);

namespace convnet::cpu { CONVNET_LRN_TWINS }
namespace convnet::cuda { CONVNET_LRN_TWINS }
#undef CONVNET_LRN_TWINS
