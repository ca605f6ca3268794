// CUDA twin of the augment family: one kernel does crop + flip + mean subtraction +
// lighting + the HWC uint8 -> CHW float32 layout change.
// Mapping: one thread per output pixel (k, i, j), j fastest, in a grid-stride loop of
// 256-thread blocks. A warp covers 32 consecutive j of one row, so each of its three
// channel-plane writes is one coalesced 128-byte store; its reads are 96 consecutive
// source bytes (forwards or backwards) and 96 consecutive floats of the mean image, which
// the L1/L2 caches serve. No shared memory, no atomics. Memory-bound by design.
// -Xptxas -v (sm_90): 32 registers, 0 bytes smem, no spills.
#include "../kernels/augment.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

__global__ void augment_kernel(const uint8_t* __restrict__ images, const int32_t* __restrict__ source,
                               const int32_t* __restrict__ offsets, const uint8_t* __restrict__ flips,
                               const float* __restrict__ rgb_shift, const float* __restrict__ mean,
                               float* __restrict__ out, int64_t n_out, int64_t h, int64_t w, int64_t crop_h,
                               int64_t crop_w) {
  const int64_t plane = crop_h * crop_w;
  const int64_t total = n_out * plane;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; p < total; p += stride) {
    const int64_t k = p / plane;
    const int64_t r = p - k * plane;
    const int64_t i = r / crop_w;
    const int64_t j = r - i * crop_w;
    const int64_t s = source ? source[k] : k;
    const int64_t jj = (flips && flips[k]) ? crop_w - 1 - j : j;
    const int64_t y = offsets[2 * k] + i, x = offsets[2 * k + 1] + jj;
    const int64_t pix = (y * w + x) * 3;
    const uint8_t* src = images + s * h * w * 3 + pix;
    float vr = src[0], vg = src[1], vb = src[2];
    if (mean) { vr -= mean[pix]; vg -= mean[pix + 1]; vb -= mean[pix + 2]; }
    if (rgb_shift) { vr += rgb_shift[3 * k]; vg += rgb_shift[3 * k + 1]; vb += rgb_shift[3 * k + 2]; }
    float* o = out + k * 3 * plane + r;
    o[0] = vr;
    o[plane] = vg;
    o[2 * plane] = vb;
  }
}

}  // namespace

void augment(const uint8_t* images, const int32_t* source, const int32_t* offsets, const uint8_t* flips,
             const float* rgb_shift, const float* mean, float* out, int64_t n_out, int64_t h, int64_t w,
             int64_t crop_h, int64_t crop_w) {
  const int64_t total = n_out * crop_h * crop_w;
  if (total == 0) return;
  augment_kernel<<<blocks_for(total, 256), 256, 0, stream()>>>(images, source, offsets, flips, rgb_shift, mean,
                                                               out, n_out, h, w, crop_h, crop_w);
  CUDA_CHECK_LAUNCH("augment_kernel");
}

}  // namespace convnet::cuda
