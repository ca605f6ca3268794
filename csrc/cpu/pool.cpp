// CPU twins of the max-pool family. OpenMP over the (image, channel) planes; a plane
// (55x55 floats at most in AlexNet) stays in L1 while it is worked on.
#include <algorithm>
#include <cstdint>
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

namespace {

// first[ow] = offset, from its top-left corner, of window (oh, ow)'s first element equal to its
// output y (row-major order), or -1 for none. The window's elements are tested in reverse order,
// so the last hit written is the first. Windows go kLanes at a time with a fixed trip count (so
// the whole block vectorises, no scalar remainder); the last block is moved back to end at Q,
// recomputing a few windows, which is harmless. Needs Q >= kLanes.
template <int64_t kStride, int64_t kLanes>  // kStride 0: the stride is only known at run time
void first_maxima(const PoolShape& sh, const float* __restrict__ xp, const float* __restrict__ yr, int64_t oh,
                  int32_t* __restrict__ first) {
  const int64_t W = sh.w, Q = sh.q, size = sh.size, stride = kStride ? kStride : sh.stride;
  for (int64_t o0 = 0; o0 < Q; o0 += kLanes) {
    const int64_t b = std::min(o0, Q - kLanes);
    int32_t at[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) at[i] = -1;
    for (int64_t kh = size - 1; kh >= 0; --kh) {
      const float* __restrict__ r = xp + (oh * stride + kh) * W + b * stride;
      for (int64_t kw = size - 1; kw >= 0; --kw) {
        const int32_t offset = (int32_t)(kh * W + kw);
#pragma omp simd
        for (int64_t i = 0; i < kLanes; ++i) at[i] = pool_same(r[i * stride + kw], yr[b + i]) ? offset : at[i];
      }
    }
    for (int64_t i = 0; i < kLanes; ++i) first[b + i] = at[i];
  }
}

// Per plane: each window's argmax (its first element equal to y), then its dy scattered, windows
// in row-major order: an input's gradient is the sum, in that order, of the dy of the windows
// it is the argmax of (the CUDA twin gathers in the same order: the same bits).
template <int64_t kStride>
void max_pool_backward_impl(const PoolShape& sh, const float* x, const float* y, const float* dy, float* dx) {
  const int64_t H = sh.h, W = sh.w, P = sh.p, Q = sh.q, stride = kStride ? kStride : sh.stride;
#pragma omp parallel if (sh.n * sh.c * H * W > 65536)
  {
    std::vector<int32_t> first(Q);
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < sh.n * sh.c; ++plane) {
      const float* xp = x + plane * H * W;
      float* dxp = dx + plane * H * W;
      std::fill(dxp, dxp + H * W, 0.f);
      for (int64_t oh = 0; oh < P; ++oh) {
        const float* yr = y + (plane * P + oh) * Q;
        if (Q >= 16)  // one AVX-512 vector of floats
          first_maxima<kStride, 16>(sh, xp, yr, oh, first.data());
        else if (Q >= 8)
          first_maxima<kStride, 8>(sh, xp, yr, oh, first.data());
        else if (Q >= 4)
          first_maxima<kStride, 4>(sh, xp, yr, oh, first.data());
        else
          first_maxima<kStride, 1>(sh, xp, yr, oh, first.data());
        const float* dyr = dy + (plane * P + oh) * Q;
        float* corner = dxp + oh * stride * W;
        for (int64_t ow = 0; ow < Q; ++ow)
          if (first[ow] >= 0) corner[ow * stride + first[ow]] += dyr[ow];
      }
    }
  }
}

}  // namespace

void max_pool_backward(const PoolShape& sh, const float* x, const float* y, const float* dy, float* dx) {
  if (sh.stride == 2)  // the paper's pools: a compile-time stride lets the loads become shuffles
    max_pool_backward_impl<2>(sh, x, y, dy, dx);
  else
    max_pool_backward_impl<0>(sh, x, y, dy, dx);
}

}  // namespace convnet::cpu
