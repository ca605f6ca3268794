// Twin kernels of the augment family: each is defined once in csrc/cpu/augment.cpp
// (namespace cpu) and once in csrc/cuda/augment.cu (namespace cuda), same signature.
// Kernels trust their arguments: csrc/ops/augment.cpp has checked them.
#pragma once
#include <cstdint>

// augment: crop + horizontal flip + mean-image subtraction + PCA lighting + HWC->CHW, for
// n_out output images drawn from a batch of uint8 (n_in, h, w, 3) images:
//   out[k, c, i, j] = img[s, y+i, x+j', c] - mean[y+i, x+j', c] + rgb_shift[k, c]
// with s = source[k] (or k when source is null), (y, x) = offsets[k], and
// j' = flips[k] ? crop_w-1-j : j. mean (h, w, 3) and rgb_shift (n_out, 3) may be null (zero).
#define CONVNET_AUGMENT_TWINS                                                                       \
  void augment(const uint8_t* images, const int32_t* source, const int32_t* offsets,                \
               const uint8_t* flips, const float* rgb_shift, const float* mean, float* out,         \
               int64_t n_out, int64_t h, int64_t w, int64_t crop_h, int64_t crop_w);

namespace convnet::cpu { CONVNET_AUGMENT_TWINS }
namespace convnet::cuda { CONVNET_AUGMENT_TWINS }
#undef CONVNET_AUGMENT_TWINS
