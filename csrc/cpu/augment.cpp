// CPU twin of the augment family: one pass over the output, OpenMP across (image, row).
// Each output row reads one contiguous run of source pixels (forwards or backwards when
// flipped) and writes three contiguous channel rows.
#include "../kernels/augment.h"

namespace convnet::cpu {

void augment(const uint8_t* images, const int32_t* source, const int32_t* offsets, const uint8_t* flips,
             const float* rgb_shift, const float* mean, float* out, int64_t n_out, int64_t h, int64_t w,
             int64_t crop_h, int64_t crop_w) {
  const int64_t plane = crop_h * crop_w;
#pragma omp parallel for collapse(2) schedule(static) if (n_out * plane > 16384)
  for (int64_t k = 0; k < n_out; ++k) {
    for (int64_t i = 0; i < crop_h; ++i) {
      const int64_t s = source ? source[k] : k;
      const int64_t y = offsets[2 * k] + i, x0 = offsets[2 * k + 1];
      const bool flip = flips && flips[k];
      const float sr = rgb_shift ? rgb_shift[3 * k + 0] : 0.f;
      const float sg = rgb_shift ? rgb_shift[3 * k + 1] : 0.f;
      const float sb = rgb_shift ? rgb_shift[3 * k + 2] : 0.f;
      const uint8_t* src = images + ((s * h + y) * w + x0) * 3;
      const float* msrc = mean ? mean + (y * w + x0) * 3 : nullptr;
      float* o_r = out + (k * 3 + 0) * plane + i * crop_w;
      float* o_g = o_r + plane;
      float* o_b = o_g + plane;
      for (int64_t j = 0; j < crop_w; ++j) {
        const int64_t jj = flip ? crop_w - 1 - j : j;  // source column within the crop
        float r = src[3 * jj], g = src[3 * jj + 1], b = src[3 * jj + 2];
        if (msrc) { r -= msrc[3 * jj]; g -= msrc[3 * jj + 1]; b -= msrc[3 * jj + 2]; }
        o_r[j] = r + sr;
        o_g[j] = g + sg;
        o_b[j] = b + sb;
      }
    }
  }
}

}  // namespace convnet::cpu
