// CPU twins of the max-pool family. OpenMP over the (image, channel) planes; a plane
// (55x55 floats at most in AlexNet) stays in L1 while it is worked on.
#include <algorithm>
#include <vector>

#include "../kernels/pool.h"

namespace convnet::cpu {

// Separable: the max over the window's rows into a row buffer (contiguous, vectorised),
// then the max over each window's columns of that buffer.
void max_pool(const PoolShape& sh, const float* x, float* y) {
  const int64_t H = sh.h, W = sh.w, P = sh.p, Q = sh.q, size = sh.size, stride = sh.stride;
  const int64_t width = (Q - 1) * stride + size;  // columns any window reads
#pragma omp parallel if (sh.n * sh.c * H * W > 65536)
  {
    std::vector<float> row(width);
    float* rm = row.data();
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < sh.n * sh.c; ++plane) {
      const float* xp = x + plane * H * W;
      float* yp = y + plane * P * Q;
      for (int64_t oh = 0; oh < P; ++oh) {
        const float* r0 = xp + oh * stride * W;
        std::copy(r0, r0 + width, rm);
        for (int64_t kh = 1; kh < size; ++kh) {
          const float* r = r0 + kh * W;
#pragma omp simd
          for (int64_t w = 0; w < width; ++w) rm[w] = pool_better(r[w], rm[w]) ? r[w] : rm[w];
        }
        float* yr = yp + oh * Q;
#pragma omp simd
        for (int64_t ow = 0; ow < Q; ++ow) yr[ow] = rm[ow * stride];
        for (int64_t kw = 1; kw < size; ++kw) {
#pragma omp simd
          for (int64_t ow = 0; ow < Q; ++ow) {
            float v = rm[ow * stride + kw];
            yr[ow] = pool_better(v, yr[ow]) ? v : yr[ow];
          }
        }
      }
    }
  }
}

// Scatter per plane, windows in row-major order: an input's gradient is the sum, in that
// order, of the dy of the windows it is the argmax of (the CUDA twin gathers in the same
// order, so both give the same bits).
void max_pool_backward(const PoolShape& sh, const float* x, const float* y, const float* dy, float* dx) {
  const int64_t H = sh.h, W = sh.w, P = sh.p, Q = sh.q, size = sh.size, stride = sh.stride;
#pragma omp parallel for schedule(static) if (sh.n * sh.c * H * W > 65536)
  for (int64_t plane = 0; plane < sh.n * sh.c; ++plane) {
    const float* xp = x + plane * H * W;
    const float* yp = y + plane * P * Q;
    const float* dyp = dy + plane * P * Q;
    float* dxp = dx + plane * H * W;
    std::fill(dxp, dxp + H * W, 0.f);
    for (int64_t oh = 0; oh < P; ++oh) {
      for (int64_t ow = 0; ow < Q; ++ow) {
        const float m = yp[oh * Q + ow];
        const int64_t corner = oh * stride * W + ow * stride;
        for (int64_t kh = 0; kh < size; ++kh) {
          const int64_t r = corner + kh * W;
          int64_t kw = 0;
          while (kw < size && !pool_same(xp[r + kw], m)) ++kw;
          if (kw < size) {
            dxp[r + kw] += dyp[oh * Q + ow];
            break;
          }
        }
      }
    }
  }
}

}  // namespace convnet::cpu
