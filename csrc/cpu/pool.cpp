// CPU twins of the max-pool family. OpenMP over the (image, channel) planes; a plane
// (55x55 floats at most in AlexNet) stays in L1 while it is worked on.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../kernels/pool.h"

namespace convnet::cpu {

// Separable: the max over the window's rows into a row buffer (contiguous, vectorised),
// then the max over each window's columns of that buffer.
void max_pool_plain(const PoolShape& sh, const float* x, float* y) {
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

// pool_better and pool_same (kernels/pool.h) with bitwise & and | instead of && and ||: GCC 12
// vectorises the loops below only in this form (with the short-circuits it left them scalar and
// branchy, 6x slower), and the plain forward above only in the other (2.7x slower this way).
inline bool better_nb(float v, float m) { return (m == m) & !(v <= m); }
inline bool same_nb(float v, float m) { return (v == m) | ((v != v) & (m != m)); }

// The same with indices. Each buffer column keeps the row kh of its maximum (the first one down
// the column); the buffers are then split by column phase (w % stride) so that a window's k-th
// column is the same position in one phase array for every window: contiguous loads. Across
// columns a candidate replaces the running maximum when it is better, or the same value from a
// smaller kh: the window's row-major first maximum (scanning kw upwards, the first maximal
// element in row-major order has the smallest kh, then kw). kh and kw are carried as floats
// (exact: small integers) so every compare and select is on float lanes. Both passes go in
// fixed-size blocks, so there is no scalar remainder: the column pass's last block is moved back
// to end at the row's end (redoing a few items: each step is idempotent), the window pass pads.
//
// rm, rk: the maximum down each column of the size rows from r0, and its row kh. Blocks read
// only x and write each column once (the moved-back last block rewrites a few with the same
// values; re-reading stored values there stalled on store forwarding).
template <int64_t kLanes>
void column_maxima(const PoolShape& sh, const float* __restrict__ r0, int64_t width, float* __restrict__ rm,
                   float* __restrict__ rk) {
  for (int64_t w0 = 0; w0 < width; w0 += kLanes) {
    const int64_t b = std::min(w0, width - kLanes);
    float m[kLanes], k[kLanes];
#pragma omp simd
    for (int64_t i = 0; i < kLanes; ++i) {
      m[i] = r0[b + i];
      k[i] = 0.f;
    }
    for (int64_t kh = 1; kh < sh.size; ++kh) {
      const float* __restrict__ r = r0 + kh * sh.w + b;
      const float fkh = (float)kh;
#pragma omp simd
      for (int64_t i = 0; i < kLanes; ++i) {
        const bool take = better_nb(r[i], m[i]);
        m[i] = take ? r[i] : m[i];
        k[i] = take ? fkh : k[i];
      }
    }
#pragma omp simd
    for (int64_t i = 0; i < kLanes; ++i) {
      rm[b + i] = m[i];
      rk[b + i] = k[i];
    }
  }
}

// pm, pk: the phase arrays (phase p at p * len); window ow's column kw is at phase kw % stride,
// position ow + kw / stride. Windows go kLanes at a time; the phase arrays are padded with
// zeros to whole blocks, so the last block's extra lanes read zeros and are not stored.
constexpr int64_t kLanes = 16;  // one AVX-512 vector of floats

void window_maxima(const PoolShape& sh, int64_t oh, const float* __restrict__ pm, const float* __restrict__ pk,
                   int64_t len, float* __restrict__ yr, int32_t* __restrict__ ir) {
  const int64_t W = sh.w, Q = sh.q, size = sh.size, stride = sh.stride;
  for (int64_t b = 0; b < Q; b += kLanes) {
    float m[kLanes], mk[kLanes], mw[kLanes];
    int32_t at[kLanes];
#pragma omp simd
    for (int64_t i = 0; i < kLanes; ++i) {
      m[i] = pm[b + i];
      mk[i] = pk[b + i];
      mw[i] = 0.f;
    }
    for (int64_t kw = 1; kw < size; ++kw) {
      const float fkw = (float)kw;
      const int64_t first = (kw % stride) * len + kw / stride + b;
      const float* __restrict__ vm = pm + first;
      const float* __restrict__ vk = pk + first;
#pragma omp simd
      for (int64_t i = 0; i < kLanes; ++i) {
        const bool take = better_nb(vm[i], m[i]) | (same_nb(vm[i], m[i]) & (vk[i] < mk[i]));
        m[i] = take ? vm[i] : m[i];
        mk[i] = take ? vk[i] : mk[i];
        mw[i] = take ? fkw : mw[i];
      }
    }
    // offsets fit int32 (planes < 2^31 elements, checked)
    const int32_t corner = (int32_t)((oh * W + b) * stride), w32 = (int32_t)W, s32 = (int32_t)stride;
#pragma omp simd
    for (int64_t i = 0; i < kLanes; ++i) at[i] = corner + (int32_t)mk[i] * w32 + (int32_t)i * s32 + (int32_t)mw[i];
    const int64_t n = std::min(kLanes, Q - b);
    std::copy(m, m + n, yr + b);
    std::copy(at, at + n, ir + b);
  }
}

// One thread's buffers for plane_indices.
struct IndexBuffers {
  int64_t width, len;  // columns any window reads; phase length (a slot for every lane of every block)
  std::vector<float> row, row_kh, phase, phase_kh;
  explicit IndexBuffers(const PoolShape& sh)
      : width((sh.q - 1) * sh.stride + sh.size),
        len((sh.q + kLanes - 1) / kLanes * kLanes + (sh.size - 1) / sh.stride),
        row(width), row_kh(width), phase(sh.stride * len, 0.f), phase_kh(sh.stride * len, 0.f) {}
};

// One plane's y and indices.
void plane_indices(const PoolShape& sh, const float* xp, float* yp, int32_t* ip, IndexBuffers& b) {
  const int64_t W = sh.w, P = sh.p, Q = sh.q, stride = sh.stride, width = b.width, len = b.len;
  float *rm = b.row.data(), *rk = b.row_kh.data(), *pm = b.phase.data(), *pk = b.phase_kh.data();
  for (int64_t oh = 0; oh < P; ++oh) {
    const float* r0 = xp + oh * stride * W;
    if (width >= 16)
      column_maxima<16>(sh, r0, width, rm, rk);
    else if (width >= 4)
      column_maxima<4>(sh, r0, width, rm, rk);
    else
      column_maxima<1>(sh, r0, width, rm, rk);
    for (int64_t p = 0; p < stride; ++p) {  // slots past the row stay 0 (read, never stored)
      const int64_t used = std::min(len, (width - p + stride - 1) / stride);
#pragma omp simd
      for (int64_t j = 0; j < used; ++j) {
        pm[p * len + j] = rm[j * stride + p];
        pk[p * len + j] = rk[j * stride + p];
      }
    }
    window_maxima(sh, oh, pm, pk, len, yp + oh * Q, ip + oh * Q);
  }
}

// inside[rel]: whether offset rel from a window's top-left corner lies in the window (rel < span).
std::vector<unsigned char> window_offsets(const PoolShape& sh) {
  std::vector<unsigned char> inside((sh.size - 1) * sh.w + sh.size, 0);
  for (int64_t kh = 0; kh < sh.size; ++kh)
    for (int64_t kw = 0; kw < sh.size; ++kw) inside[kh * sh.w + kw] = 1;
  return inside;
}

// One plane: dx zeroed, then each window's dy added at its index, windows in row-major order
// (the CUDA twin gathers in the same order: the same bits). An index is followed only when it
// lies inside its window (offset from the corner in [0, span) and marked in `inside`: no
// division per window). Returns how many were not.
int64_t plane_scatter(const PoolShape& sh, const int32_t* ip, const float* dyp, float* dxp,
                      const std::vector<unsigned char>& inside) {
  const int64_t W = sh.w, P = sh.p, Q = sh.q, stride = sh.stride, span = (int64_t)inside.size();
  std::fill(dxp, dxp + sh.h * W, 0.f);
  int64_t bad = 0;
  for (int64_t oh = 0; oh < P; ++oh) {
    for (int64_t ow = 0; ow < Q; ++ow) {
      const int64_t at = ip[oh * Q + ow], rel = at - (oh * stride * W + ow * stride);
      if (rel >= 0 && rel < span && inside[rel])
        dxp[at] += dyp[oh * Q + ow];
      else
        ++bad;
    }
  }
  return bad;
}

}  // namespace

void max_pool(const PoolShape& sh, const float* x, float* y, int32_t* indices) {
  if (!indices) return max_pool_plain(sh, x, y);
  const int64_t in_plane = sh.h * sh.w, out_plane = sh.p * sh.q;
#pragma omp parallel if (sh.n * sh.c * in_plane > 65536)
  {
    IndexBuffers buffers(sh);
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < sh.n * sh.c; ++plane)
      plane_indices(sh, x + plane * in_plane, y + plane * out_plane, indices + plane * out_plane, buffers);
  }
}

void max_pool_backward_indices(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx,
                               int64_t* invalid) {
  const int64_t in_plane = sh.h * sh.w, out_plane = sh.p * sh.q;
  const std::vector<unsigned char> inside = window_offsets(sh);
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (sh.n * sh.c * in_plane > 65536)
  for (int64_t plane = 0; plane < sh.n * sh.c; ++plane)
    bad += plane_scatter(sh, indices + plane * out_plane, dy + plane * out_plane, dx + plane * in_plane, inside);
  *invalid = bad;
}

// Without saved indices: each plane's argmax recomputed from x (the forward's code, into a
// plane-sized buffer), then the same scatter. y is not read: for y = max_pool(x) its first equal
// element is the argmax.
void max_pool_backward(const PoolShape& sh, const float* x, const float* /*y*/, const float* dy, float* dx) {
  const int64_t in_plane = sh.h * sh.w, out_plane = sh.p * sh.q;
  const std::vector<unsigned char> inside = window_offsets(sh);
#pragma omp parallel if (sh.n * sh.c * in_plane > 65536)
  {
    IndexBuffers buffers(sh);
    std::vector<float> y_plane(out_plane);
    std::vector<int32_t> argmax(out_plane);
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < sh.n * sh.c; ++plane) {
      plane_indices(sh, x + plane * in_plane, y_plane.data(), argmax.data(), buffers);
      plane_scatter(sh, argmax.data(), dy + plane * out_plane, dx + plane * in_plane, inside);
    }
  }
}

}  // namespace convnet::cpu
