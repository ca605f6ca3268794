// Twin kernels of the fully-connected family (csrc/cpu/linear.cpp, csrc/cuda/linear.cu),
// built on each device's GEMM. x (n, in), w (out, in), y (n, out), all row-major float32.
#pragma once
#include <cstdint>

#define CONVNET_LINEAR_TWINS                                                                      \
  /* y = x w^T (+ b, if b is not null) */                                                          \
  void linear(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* b, \
              float* y);                                                                           \
  /* dx = dy w; dw = dy^T x; db = column sums of dy (each overwritten; dx/db skipped if null) */   \
  void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w,        \
                       const float* dy, float* dx, float* dw, float* db);

namespace convnet::cpu { CONVNET_LINEAR_TWINS }
namespace convnet::cuda { CONVNET_LINEAR_TWINS }
#undef CONVNET_LINEAR_TWINS
