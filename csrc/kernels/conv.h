// Twin kernels of the convolution family (csrc/cpu/conv.cpp, csrc/cuda/conv.cu).
// All tensors dense NCHW float32; weights (k, c/groups, r, s). Kernels trust ConvShape:
// csrc/ops/conv.cpp has checked it.
#pragma once
#include <cstdint>

namespace convnet {
struct ConvShape {
  int64_t n, c, h, w;          // input: batch, channels, height, width
  int64_t k, r, s;             // output channels, kernel height, kernel width
  int64_t stride_h, stride_w, pad_h, pad_w, groups;
  int64_t p, q;                // output height, width
};
}  // namespace convnet

namespace convnet {
// Which CUDA GEMM variant the conv and linear kernels run (csrc/cuda/conv.cu says what each is):
// CONVNET_CONV_VARIANT (0 to 5) read once from the environment (default 5), or set_conv_variant (tests).
// Defined in csrc/ops/conv.cpp, so CPU-only builds have it too.
int conv_variant();
void set_conv_variant(int variant);
}  // namespace convnet

#define CONVNET_CONV_TWINS                                                                         \
  /* y = conv(x, w) (+ b, if b is not null) */                                                      \
  void conv2d(const ConvShape& sh, const float* x, const float* w, const float* b, float* y);      \
  /* dx = gradient with respect to x (overwritten, not accumulated) */                              \
  void conv2d_backward_data(const ConvShape& sh, const float* w, const float* dy, float* dx);      \
  /* dw (and db, if not null) = gradients with respect to w and b (overwritten) */                  \
  void conv2d_backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw, float* db);

namespace convnet::cpu { CONVNET_CONV_TWINS }
namespace convnet::cuda { CONVNET_CONV_TWINS }
#undef CONVNET_CONV_TWINS
