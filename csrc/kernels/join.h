// Twin kernels of the join family: the plumbing the layer graph needs where two towers meet
// (channel concatenation and splitting, and summing the gradients of an output read by
// several layers). Defined in csrc/cpu/join.cpp and csrc/cuda/join.cu; checked in csrc/ops/join.cpp.
#pragma once
#include <cstdint>

#define CONVNET_JOIN_TWINS                                                              \
  /* a[i] += b[i] */                                                                    \
  void add_inplace(float* a, const float* b, int64_t n);                                \
  /* dst[r * dst_stride + c] = src[r * src_stride + c] for r < rows, c < cols */        \
  void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, \
                 int64_t rows, int64_t cols);

namespace convnet::cpu { CONVNET_JOIN_TWINS }
namespace convnet::cuda { CONVNET_JOIN_TWINS }
#undef CONVNET_JOIN_TWINS
