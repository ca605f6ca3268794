// CPU twins of the max-pool family. OpenMP over the (image, channel) planes. The backward of 3x3
// windows at stride 2 (AlexNet's; with AVX-512) walks down each plane's rows (s2 below), planes
// narrower than 17 columns two at a time; for other windows (or without AVX-512) the backward
// without indices takes sixteen planes at a time, one a vector lane. A plane (55x55 floats at most
// in AlexNet) stays in L1 while it is worked on, a group of sixteen in L2.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../kernels/pool.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// One thread's buffers for plane_indices. Only phases below the window's size are ever read
// (kw % stride), so a stride past the size keeps size of them: stride of them took memory that grew
// with the stride (gigabytes for a stride of 2^23).
struct IndexBuffers {
  int64_t width, len, phases;  // columns any window reads; phase length (a slot for every lane of every block)
  std::vector<float> row, row_kh, phase, phase_kh;
  explicit IndexBuffers(const PoolShape& sh)
      : width((sh.q - 1) * sh.stride + sh.size),
        len((sh.q + kLanes - 1) / kLanes * kLanes + (sh.size - 1) / sh.stride),
        phases(std::min(sh.stride, sh.size)),
        row(width), row_kh(width), phase(phases * len, 0.f), phase_kh(phases * len, 0.f) {}
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
    for (int64_t p = 0; p < b.phases; ++p) {  // slots past the row stay 0 (read, never stored)
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

// ---- The backward without indices: sixteen planes side by side ----
// Sixteen planes are transposed into one element-major buffer (element e of lane l at e * 16 + l),
// and every lane runs the scalar algorithm for its own plane with the same vector loads, compares
// and adds: each window's first maximum in row-major order (max_pool's index), then its dy added
// there, windows in row-major order (plane_scatter's order). Nothing depends on where a window
// sits in its row, so 13 x 13 planes fill the lanes as well as 55 x 55 ones, and any window
// size and stride take the same path. The same bits as with saved indices: per lane the same
// compares and the same sums in the same order (a lane whose element is not the argmax adds +0,
// which changes no sum: one that starts at +0 is never -0).
// (Without AVX-512, GCC notes that passing these by value changes the ABI: no matter, every
// function here is internal.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
using Floats = float __attribute__((vector_size(64)));  // one AVX-512 register, two AVX2 ones
using Mask = int32_t __attribute__((vector_size(64)));  // int lanes; a comparison's are all ones or 0
constexpr int64_t kPlanes = 16;                         // a group's planes, one a lane

inline Floats load16(const float* p) {
  Floats v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, Floats v) { std::memcpy(p, &v, sizeof v); }

#if defined(__clang__)
#define CONVNET_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define CONVNET_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, Mask{__VA_ARGS__})
#endif
// The 16x16 block v transposed in place, in the usual four steps: 32-bit then 64-bit interleaves
// inside 128-bit lanes (unpcklps/unpcklpd on x86), then two rounds of moving whole 128-bit lanes.
inline void transpose16(Floats (&v)[kPlanes]) {
  Floats t[kPlanes];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {  // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved
    t[2 * i] = CONVNET_SHUFFLE(v[2 * i], v[2 * i + 1], 0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29);
    t[2 * i + 1] = CONVNET_SHUFFLE(v[2 * i], v[2 * i + 1], 2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31);
  }
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {  // v[4g + j], 128-bit lane L: column 4L + j of rows 4g .. 4g + 3
    for (int h = 0; h < 2; ++h) {
      const Floats a = t[4 * g + h], b = t[4 * g + h + 2];
      v[4 * g + 2 * h] = CONVNET_SHUFFLE(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
      v[4 * g + 2 * h + 1] = CONVNET_SHUFFLE(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // column 4L + j: lane L of v[j], v[4 + j], v[8 + j], v[12 + j]
    const Floats w0 = CONVNET_SHUFFLE(v[j], v[4 + j], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
                 w1 = CONVNET_SHUFFLE(v[j], v[4 + j], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31),
                 z0 = CONVNET_SHUFFLE(v[8 + j], v[12 + j], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27),
                 z1 = CONVNET_SHUFFLE(v[8 + j], v[12 + j], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    t[j] = CONVNET_SHUFFLE(w0, z0, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    t[8 + j] = CONVNET_SHUFFLE(w0, z0, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    t[4 + j] = CONVNET_SHUFFLE(w1, z1, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    t[12 + j] = CONVNET_SHUFFLE(w1, z1, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
#pragma GCC unroll 16
  for (int i = 0; i < kPlanes; ++i) v[i] = t[i];
}
#undef CONVNET_SHUFFLE

inline Mask better16(Floats v, Floats m) { return (m == m) & ~(v <= m); }           // pool_better
inline Mask same16(Floats v, Floats m) { return (v == m) | ((v != v) & (m != m)); }  // pool_same

// The first n (<= 16) floats at p, the rest zeros; and their store. Nothing past p + n is read
// or written: a plane's last, partial block may end the tensor.
inline Floats load_first(const float* p, int64_t n) {
#if defined(__AVX512F__)
  return (Floats)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#else
  float v[kPlanes] = {};
  std::memcpy(v, p, n * sizeof(float));
  return load16(v);
#endif
}
inline void store_first(float* p, Floats v, int64_t n) {
#if defined(__AVX512F__)
  _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#else
  std::memcpy(p, &v, n * sizeof(float));
#endif
}

// planes[first .. first + count) of src (len floats each) into out, element-major (lanes past
// count are zeros), 16 x 16 blocks. Returns whether any value read was NaN (kScan; else false).
template <bool kScan>
bool planes_to_lanes(const float* src, int64_t len, int64_t first, int64_t count, float* out) {
  Mask nan = {};
  for (int64_t e0 = 0; e0 < len; e0 += kPlanes) {
    const int64_t n = std::min(kPlanes, len - e0);
    const float* p = src + first * len + e0;
    Floats v[kPlanes];
    if (count == kPlanes && n == kPlanes) {  // unrolled with constant l and j: v stays in registers
#pragma GCC unroll 16
      for (int l = 0; l < kPlanes; ++l) {
        v[l] = load16(p + l * len);
        __builtin_prefetch(p + l * len + 8 * kPlanes);  // sixteen streams: 55x55 planes ran 1.1x faster
      }
    } else {
#pragma GCC unroll 16
      for (int l = 0; l < kPlanes; ++l) v[l] = l < count ? load_first(p + l * len, n) : Floats{};
    }
    if (kScan) {
#pragma GCC unroll 16
      for (int l = 0; l < kPlanes; ++l) nan |= v[l] != v[l];
    }
    transpose16(v);
#pragma GCC unroll 16
    for (int j = 0; j < kPlanes; ++j)
      if (j < n) store16(out + (e0 + j) * kPlanes, v[j]);
  }
  for (int l = 0; l < kPlanes; ++l)
    if (nan[l]) return true;
  return false;
}

// The inverse: lanes [0, count) of in back to planes[first .. first + count) of dst.
void lanes_to_planes(const float* in, int64_t len, int64_t first, int64_t count, float* dst) {
  for (int64_t e0 = 0; e0 < len; e0 += kPlanes) {
    const int64_t n = std::min(kPlanes, len - e0);
    float* p = dst + first * len + e0;
    Floats v[kPlanes];
#pragma GCC unroll 16
    for (int j = 0; j < kPlanes; ++j) v[j] = j < n ? load16(in + (e0 + j) * kPlanes) : Floats{};
    transpose16(v);
    if (count == kPlanes && n == kPlanes) {
#pragma GCC unroll 16
      for (int l = 0; l < kPlanes; ++l) store16(p + l * len, v[l]);
    } else {
#pragma GCC unroll 16
      for (int l = 0; l < kPlanes; ++l)
        if (l < count) store_first(p + l * len, v[l], n);
    }
  }
}

// One thread's element-major buffers: x, dy and dx of a group of planes, at most kLaneBudget bytes
// for x and dx (larger planes take another path: max_pool_backward).
constexpr int64_t kLaneBudget = (int64_t)64 << 20;
struct LaneBuffers {
  std::vector<float> x, dy, dx;
  explicit LaneBuffers(const PoolShape& sh)
      : x(sh.h * sh.w * kPlanes), dy(sh.p * sh.q * kPlanes), dx(sh.h * sh.w * kPlanes) {}
};

// Each window's dy added at its first maximum in row-major order (the lanes of b.x and b.dy into
// b.dx, zeroed). The maximum first, then the first element the same as it: without NaN in the
// group (kNaN false, the common case) a max of the window's elements (no order to keep: each
// compare is independent of the last, so the CPU overlaps windows) and plain equality; with NaN,
// pool_better's scan (the first NaN wins) and pool_same. kSize: the window's size, or 0 for sh.size.
template <int kSize, bool kNaN>
void add_windows(const PoolShape& sh, LaneBuffers& b) {
  const int64_t W = sh.w, P = sh.p, Q = sh.q, stride = sh.stride, size = kSize ? kSize : sh.size;
  const int64_t row = W * kPlanes;  // floats from one input row to the next
  const Floats zero = {};
  for (int64_t oh = 0; oh < P; ++oh) {
    for (int64_t ow = 0; ow < Q; ++ow) {
      const int64_t corner = (oh * stride * W + ow * stride) * kPlanes;
      const float* xw = b.x.data() + corner;
      float* dxw = b.dx.data() + corner;
      Floats m = load16(xw);
      for (int64_t kh = 0; kh < size; ++kh) {
        for (int64_t kw = kh ? 0 : 1; kw < size; ++kw) {
          const Floats v = load16(xw + kh * row + kw * kPlanes);
          m = (kNaN ? better16(v, m) : m < v) ? v : m;
        }
      }
      // at: the place kh * size + kw of the first element the same as m, found scanning
      // backwards (each compare independent; only the selects are in order)
      Mask at = {};
      for (int64_t kh = size - 1; kh >= 0; --kh) {
        for (int64_t kw = size - 1; kw >= 0; --kw) {
          const Floats v = load16(xw + kh * row + kw * kPlanes);
          at = (kNaN ? same16(v, m) : v == m) ? (int32_t)(kh * size + kw) + Mask{} : at;
        }
      }
      const Floats d = load16(b.dy.data() + (oh * Q + ow) * kPlanes);
      for (int64_t kh = 0; kh < size; ++kh) {
        for (int64_t kw = 0; kw < size; ++kw) {
          float* o = dxw + kh * row + kw * kPlanes;
          store16(o, load16(o) + (at == (int32_t)(kh * size + kw) ? d : zero));
        }
      }
    }
  }
}

// dx of planes [first, first + count), count <= 16.
void group_backward(const PoolShape& sh, const float* x, const float* dy, float* dx, int64_t first, int64_t count,
                    LaneBuffers& b) {
  const int64_t hw = sh.h * sh.w;
  const bool nan = planes_to_lanes<true>(x, hw, first, count, b.x.data());
  planes_to_lanes<false>(dy, sh.p * sh.q, first, count, b.dy.data());
  std::fill(b.dx.begin(), b.dx.end(), 0.f);
  if (sh.size == 3)
    nan ? add_windows<3, true>(sh, b) : add_windows<3, false>(sh, b);
  else
    nan ? add_windows<0, true>(sh, b) : add_windows<0, false>(sh, b);
  lanes_to_planes(b.dx.data(), hw, first, count, dx);
}

#if defined(__AVX512F__)
// ---- The backward for 3x3 windows at stride 2 (AlexNet's three pools), with AVX-512 ----
// Row by row in the planes, no transposes. Sixteen windows side by side in a vector: sixteen
// consecutive ones of a row ("wide", rows of more than 16 columns), or eight of one plane's row
// beside eight of the next plane's ("pair", rows of 16 columns or fewer: 13x13 planes' six
// windows would fill a wide vector badly). Window ow's columns 2ow, 2ow + 1 and 2ow + 2 are its
// lane of three vectors permuted out of the row: even, odd, and even moved on by one window.
// Each window's pick (its argmax recomputed from x, or its saved index) and dy then go down the
// rows (walk_rows), keeping plane_scatter's order of sums: the same bits. Picking the argmax by
// mask operations (FirstMaximum) rather than as a vector of positions compared nine times made
// the 13x13 planes' walk 1.14x faster (0.093 -> 0.082 ms for 13->6 at batch 16).
namespace s2 {
inline __mmask16 first(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }
// p[0 .. 16) where that ends by `end`, else p[0 .. n) and zeros. Lanes from n on are no
// window's (junk or zeros). Masked loads only where they must be: on the 2-core AMD EPYC this
// was written on, masked loads (even with every lane set) made the whole pass 1.8x slower.
inline __m512 load(const float* p, int64_t n, const float* end) {
  return n >= 16 || p + 16 <= end ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first(n), p);
}
inline void store(float* p, __m512 v, int64_t n) {
  if (n >= 16)
    _mm512_storeu_ps(p, v);
  else
    _mm512_mask_storeu_ps(p, first(n), v);
}
inline __m512i lanes(int a0, int step) {  // a0, a0 + step, ... as permute indices
  return _mm512_setr_epi32(a0, a0 + step, a0 + 2 * step, a0 + 3 * step, a0 + 4 * step, a0 + 5 * step, a0 + 6 * step,
                           a0 + 7 * step, a0 + 8 * step, a0 + 9 * step, a0 + 10 * step, a0 + 11 * step,
                           a0 + 12 * step, a0 + 13 * step, a0 + 14 * step, a0 + 15 * step);
}

// v[kh][kw]: element (kh, kw) of each lane's window. Returns kh * 3 + kw of its argmax by
// pool_better's scan (for planes holding NaN; the others take FirstMaximum below).
inline __m512i argmax_scan(const __m512 (&v)[3][3]) {
  __m512i at = _mm512_setzero_si512();
  __m512 m = v[0][0];
#pragma GCC unroll 8
  for (int t = 1; t < 9; ++t) {
    const __m512 e = v[t / 3][t % 3];  // pool_better(e, m): m not NaN, and not e <= m
    const __mmask16 take = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(m, m, _CMP_ORD_Q), e, m, _CMP_NLE_UQ);
    m = _mm512_mask_mov_ps(m, take, e);
    at = _mm512_mask_mov_epi32(at, take, _mm512_set1_epi32(t));
  }
  return at;
}

// Whether any of p[0 .. n) is NaN.
inline bool any_nan(const float* p, int64_t n) {
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    nan |= _mm512_cmp_ps_mask(_mm512_loadu_ps(p + i), _mm512_loadu_ps(p + i + 16), _CMP_UNORD_Q);
  for (; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(first(n - i), p + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  return nan != 0;
}

// Interleaved even and odd columns: the first 16 of them, and the next 16.
inline __m512 interleave_lo(__m512 even, __m512 odd) {
  return _mm512_permutex2var_ps(even, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), odd);
}
inline __m512 interleave_hi(__m512 even, __m512 odd) {
  return _mm512_permutex2var_ps(even, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
                                odd);
}

// A set of lanes: sixteen consecutive windows of one plane's rows (rows of more than 16 columns),
// columns [c, c + 32) of the rows. Pointers are the plane's (x: null without x). It provides
//   windows(): the lanes that hold a window;
//   row(r, v): v[kw] = element kw of each lane's window if its first row were input row r;
//   out(t, t_end, oh): from t, the plane of a tensor shaped like y (dy, or the indices' bits), each
//     lane's window's value in output row oh (zeros in lanes of no window); dy_of(oh): dy's;
//   corner(oh) (Wide only: for saved indices): each lane's window's first element, as an offset
//     in its plane;
//   shifted(c2, k): lane j gets window j - 1's pick (+0 for the first), c2 being window row
//     k / 3's picks in its row k % 3;
//   store(r, even, odd): input row r of dx, its even and odd columns.
// last_pick[k]: the previous block's lane 15 of shifted's c2 for k (for this block's column c).
// (Plane pointers, not a tensor's and a plane number: the compiler redoes the walk's address
// arithmetic after every store to dx, and the 13x13 planes' walk was 1.1x slower so.)
struct Wide {
  const float *x, *x_end, *dy, *dy_end;
  float* dx;
  int64_t W, P, Q;
  float* last_pick;
  int64_t c = 0;
  const __m512i even_of = lanes(0, 2), odd_of = lanes(1, 2);

  __mmask16 windows() const { return first(Q - c / 2); }
  void row(int64_t r, __m512 (&v)[3]) const {
    const float* p = x + r * W + c;
    const __m512 lo = load(p, W - c, x_end), hi = load(p + 16, W - c - 16, x_end),
                 on = W > c + 32 ? _mm512_castps128_ps512(_mm_load_ss(p + 32)) : _mm512_setzero_ps();
    v[0] = _mm512_permutex2var_ps(lo, even_of, hi);
    v[1] = _mm512_permutex2var_ps(lo, odd_of, hi);
    v[2] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(on), _mm512_castps_si512(v[0]), 1));
  }
  __m512 out(const float* t, const float* t_end, int64_t oh) const {
    const int64_t w0 = c / 2;
    return _mm512_maskz_mov_ps(windows(), load(t + oh * Q + w0, Q - w0, t_end));
  }
  __m512 dy_of(int64_t oh) const { return out(dy, dy_end, oh); }
  __m512i corner(int64_t oh) const { return _mm512_add_epi32(_mm512_set1_epi32((int)(2 * oh * W + c)), even_of); }
  __m512 shifted(__m512 c2, int64_t k) const {
    const __m512 s = _mm512_castsi512_ps(
        _mm512_alignr_epi32(_mm512_castps_si512(c2), _mm512_castps_si512(_mm512_set1_ps(last_pick[k])), 15));
    last_pick[k] = _mm_cvtss_f32(_mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set1_epi32(15), c2)));
    return s;
  }
  void store(int64_t r, __m512 even, __m512 odd) const {
    float* p = dx + r * W + c;
    s2::store(p, interleave_lo(even, odd), W - c);
    s2::store(p + 16, interleave_hi(even, odd), W - c - 16);
  }
};

// The same (but corner; out reads both planes) for lanes 0-7: the windows of a row of plane a,
// 8-15: of plane b (rows of 16 columns or fewer, so at most 7 windows: lanes 7 and 15 hold
// none), unless two is false (then b's pointers are a's, never followed).
struct Pair {
  const float *xa, *xb, *x_end, *dya, *dyb, *dy_end;
  float *dxa, *dxb;
  int64_t W, P, Q, in_plane;
  bool two;
  const __m512i even_of = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                odd_of = _mm512_add_epi32(even_of, _mm512_set1_epi32(1)),
                next_of = _mm512_add_epi32(even_of, _mm512_set1_epi32(2)),  // lane 7: b's column 0, no window
                back_one = _mm512_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6, 0, 8, 9, 10, 11, 12, 13, 14);

  __mmask16 windows() const { return (__mmask16)(first(Q) | (two ? first(Q) << 8 : 0)); }
  void row(int64_t r, __m512 (&v)[3]) const {
    const __m512 a = load(xa + r * W, W, x_end), b = two ? load(xb + r * W, W, x_end) : _mm512_setzero_ps();
    v[0] = _mm512_permutex2var_ps(a, even_of, b);
    v[1] = _mm512_permutex2var_ps(a, odd_of, b);
    v[2] = _mm512_permutex2var_ps(a, next_of, b);
  }
  __m512 out(const float* ta, const float* tb, const float* t_end, int64_t oh) const {
    const __m512 a = load(ta + oh * Q, Q, t_end), b = two ? load(tb + oh * Q, Q, t_end) : _mm512_setzero_ps();
    return _mm512_maskz_mov_ps(windows(), _mm512_shuffle_f32x4(a, b, 0x44));  // a's first 8, b's first 8
  }
  __m512 dy_of(int64_t oh) const { return out(dya, dyb, dy_end, oh); }
  __m512 shifted(__m512 c2, int64_t) const { return _mm512_maskz_permutexvar_ps(0xFEFE, back_one, c2); }
  // Rows go in order, so a store may run on into the plane's next row (stored later), not past the plane.
  void store_row(float* p, const float* plane_end, __m512 v) const {
    if (p + 16 <= plane_end)
      _mm512_storeu_ps(p, v);
    else
      _mm512_mask_storeu_ps(p, first(W), v);
  }
  void store(int64_t r, __m512 even, __m512 odd) const {
    store_row(dxa + r * W, dxa + in_plane, interleave_lo(even, odd));
    if (two) store_row(dxb + r * W, dxb + in_plane, interleave_hi(even, odd));
  }
};

// Where each lane's window sends its dy: picks(l, oh, v) returns a picker for window row oh,
// whose pick(t), asked for t = 0, 1, ..., 8 in turn, gives the lanes whose window picks its
// element t = kh * 3 + kw.
// From x, v: the window rows' input rows (row 2oh + 2 is loaded once, as the last row of window
// row oh and the first of oh + 1). Without NaN in the plane: the first element equal to the
// maximum, a tree of max (no compare waits on another, as in pool_better's scan) and the first
// of the equal ones by mask operations. -0 == +0: the first of them wins, as with pool_better.
struct FirstMaximum {
  const __m512 (&v)[3][3];
  __m512 m;
  __mmask16 seen = 0;
  __mmask16 pick(int t) {
    const __mmask16 equal = _mm512_cmp_ps_mask(v[t / 3][t % 3], m, _CMP_EQ_OQ), first = equal & ~seen;
    seen |= equal;
    return first;
  }
};
struct ScanResult {  // with NaN
  __m512i at;
  __mmask16 pick(int t) const { return _mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(t)); }
};
template <bool kNaN>
struct ArgmaxOfX {
  template <class L>
  void start(const L& l, __m512 (&v)[3][3]) { l.row(0, v[0]); }
  template <class L>
  auto picks(const L& l, int64_t oh, __m512 (&v)[3][3]) {
    l.row(2 * oh + 1, v[1]);
    l.row(2 * oh + 2, v[2]);
    if constexpr (kNaN) {
      return ScanResult{argmax_scan(v)};
    } else {
      return FirstMaximum{v, _mm512_max_ps(_mm512_max_ps(_mm512_max_ps(v[0][0], v[0][1]), _mm512_max_ps(v[0][2], v[1][0])),
                                           _mm512_max_ps(_mm512_max_ps(v[1][1], v[1][2]),
                                                         _mm512_max_ps(v[2][0], _mm512_max_ps(v[2][1], v[2][2]))))};
    }
  }
  template <class L, class Picker>
  void after(const L&, const Picker&) {}
};
// From saved indices (flat offsets in the plane): element t is at kh * W + kw from the window's
// first. An index that is no element of its window picks nothing and is counted in `invalid`.
struct SavedIndices {
  const float *plane, *end;  // the indices' bits
  int64_t invalid = 0;
  struct Offsets {
    __m512i rel;  // lanes of no window: 0 - corner < 0, no element
    int64_t W;
    __mmask16 windows, hit = 0;
    __mmask16 pick(int t) {
      const __mmask16 k = _mm512_mask_cmpeq_epi32_mask(windows, rel, _mm512_set1_epi32((int)((t / 3) * W + t % 3)));
      hit |= k;
      return k;
    }
  };
  void start(const Wide&, __m512 (&)[3][3]) {}
  Offsets picks(const Wide& l, int64_t oh, __m512 (&)[3][3]) {
    return Offsets{_mm512_sub_epi32(_mm512_castps_si512(l.out(plane, end, oh)), l.corner(oh)), l.W, l.windows()};
  }
  void after(const Wide&, const Offsets& o) { invalid += __builtin_popcount((unsigned)(o.windows & ~o.hit)); }
};

// One walk down a set of lanes. Each window's dy goes to its three rows of dx, as vectors of the
// even and odd columns: even column 2j takes window j - 1's kw = 2 and then window j's kw = 0,
// odd column 2j + 1 window j's kw = 1. Input row 2oh + 2 (kh = 2) is also row 2(oh + 1) (kh =
// 0 of the next window row): it is carried, in even/odd form, and stored after the next window
// row has added to it. So each dx element is ((((+0) + a) + b) + c) + d over its windows in
// row-major order: plane_scatter's sum, bit for bit. dy + 0 turns -0 into +0, so that c + c'
// and c are the sums (+0 + c) + c' and +0 + c; a lane whose window did not pick the element adds
// +0, a no-op (+0 changes only -0, and a sum that starts at +0 is never -0).
template <class L, class Source>
void walk_rows(const L& l, Source& s) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 v[3][3];  // ArgmaxOfX's input rows
  s.start(l, v);
  __m512 carry_even = zero, carry_odd = zero;  // input row 2oh: window row oh - 1's kh = 2 picks
  for (int64_t oh = 0; oh < l.P; ++oh) {
    auto picker = s.picks(l, oh, v);
    const __m512 d = _mm512_add_ps(l.dy_of(oh), zero);
    __m512 c[3][3];  // c[kh][kw]: the lanes' dy where (kh, kw) is their pick, else +0
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) c[t / 3][t % 3] = _mm512_maskz_mov_ps(picker.pick(t), d);
    s.after(l, picker);
    l.store(2 * oh, _mm512_add_ps(_mm512_add_ps(carry_even, l.shifted(c[0][2], 3 * oh)), c[0][0]),
            _mm512_add_ps(carry_odd, c[0][1]));
    l.store(2 * oh + 1, _mm512_add_ps(l.shifted(c[1][2], 3 * oh + 1), c[1][0]), c[1][1]);
    carry_even = _mm512_add_ps(l.shifted(c[2][2], 3 * oh + 2), c[2][0]);
    carry_odd = c[2][1];
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) v[0][kw] = v[2][kw];  // ArgmaxOfX: the next window row's first input row
  }
  l.store(2 * l.P, carry_even, carry_odd);
}
template <class Source>
void walk(Wide& l, Source& s) {
  for (l.c = 0; l.c < l.W; l.c += 32) walk_rows(l, s);  // every column, even column 2Q
}

// fn(lanes, i) for every plane i (rows of more than 16 columns; x may be null), in parallel;
// then dx's rows in no window (an even height's last) zeroed.
template <class Fn>
void for_each_wide(const PoolShape& sh, const float* x, const float* dy, float* dx, Fn fn) {
  const int64_t in_plane = sh.h * sh.w, out_plane = sh.p * sh.q, planes = sh.n * sh.c;
#pragma omp parallel if (planes * in_plane > 65536)
  {
    std::vector<float> last_pick(3 * sh.p);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < planes; ++i) {
      std::fill(last_pick.begin(), last_pick.end(), 0.f);
      Wide l{x ? x + i * in_plane : nullptr, x ? x + planes * in_plane : nullptr, dy + i * out_plane, dy + planes * out_plane,
             dx + i * in_plane, sh.w, sh.p, sh.q, last_pick.data()};
      fn(l, i);
      std::fill(dx + i * in_plane + (2 * sh.p + 1) * sh.w, dx + (i + 1) * in_plane, 0.f);
    }
  }
}

void backward(const PoolShape& sh, const float* x, const float* dy, float* dx) {
  const int64_t in_plane = sh.h * sh.w, out_plane = sh.p * sh.q, planes = sh.n * sh.c;
  if (sh.w > 16) {
    for_each_wide(sh, x, dy, dx, [&](Wide& l, int64_t i) {
      if (any_nan(x + i * in_plane, in_plane)) {
        ArgmaxOfX<true> s;
        walk(l, s);
      } else {
        ArgmaxOfX<false> s;
        walk(l, s);
      }
    });
    return;
  }
#pragma omp parallel for schedule(static) if (planes * in_plane > 65536)
  for (int64_t i = 0; i < planes; i += 2) {
    const bool two = i + 1 < planes;
    const int64_t j = two ? i + 1 : i;
    const Pair l{x + i * in_plane, x + j * in_plane, x + planes * in_plane, dy + i * out_plane, dy + j * out_plane,
                 dy + planes * out_plane, dx + i * in_plane, dx + j * in_plane, sh.w, sh.p, sh.q, in_plane, two};
    if (any_nan(x + i * in_plane, (two ? 2 : 1) * in_plane)) {
      ArgmaxOfX<true> s;
      walk_rows(l, s);
    } else {
      ArgmaxOfX<false> s;
      walk_rows(l, s);
    }
    for (int64_t k = i; k <= j; ++k)  // rows in no window
      std::fill(dx + k * in_plane + (2 * sh.p + 1) * sh.w, dx + (k + 1) * in_plane, 0.f);
  }
}

// Rows of more than 16 columns only: for narrower ones (13x13 planes) plane_scatter's plain loop
// was faster (0.055 against 0.079 ms for 13->6 at batch 16, against the pair walk of 066a3ef).
int64_t backward_indices(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx) {
  const int64_t out_plane = sh.p * sh.q, planes = sh.n * sh.c;
  const float* bits = reinterpret_cast<const float*>(indices);
  int64_t invalid = 0;
  for_each_wide(sh, nullptr, dy, dx, [&](Wide& l, int64_t i) {
    SavedIndices s{bits + i * out_plane, bits + planes * out_plane};
    walk(l, s);
#pragma omp atomic
    invalid += s.invalid;
  });
  return invalid;
}
}  // namespace s2
#endif

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
#if defined(__AVX512F__)
  if (sh.size == 3 && sh.stride == 2 && sh.w > 16) {
    *invalid = s2::backward_indices(sh, indices, dy, dx);
    return;
  }
#endif
  const int64_t in_plane = sh.h * sh.w, out_plane = sh.p * sh.q;
  const std::vector<unsigned char> inside = window_offsets(sh);
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (sh.n * sh.c * in_plane > 65536)
  for (int64_t plane = 0; plane < sh.n * sh.c; ++plane)
    bad += plane_scatter(sh, indices + plane * out_plane, dy + plane * out_plane, dx + plane * in_plane, inside);
  *invalid = bad;
}

// Without saved indices: each window's argmax recomputed from x, by rows (s2) or sixteen planes at
// a time (the lanes above). y is not read: for y = max_pool(x) its first equal element is the argmax.
void max_pool_backward(const PoolShape& sh, const float* x, const float* /*y*/, const float* dy, float* dx) {
#if defined(__AVX512F__)
  if (sh.size == 3 && sh.stride == 2) return s2::backward(sh, x, dy, dx);
#endif
  const int64_t in_plane = sh.h * sh.w, planes = sh.n * sh.c, groups = (planes + kPlanes - 1) / kPlanes;
  if (in_plane * kPlanes * 2 * (int64_t)sizeof(float) > kLaneBudget) {
    // Planes past ~724x724: one at a time through their saved-index form (the same bits), in
    // scratch the size of one plane's output. The lanes' buffers (x and dx of sixteen planes a
    // thread) took 2 GB a thread for one 4096x4096 plane.
    const int64_t out_plane = sh.p * sh.q;
    const std::vector<unsigned char> inside = window_offsets(sh);
#pragma omp parallel
    {
      IndexBuffers buffers(sh);
      std::vector<float> y(out_plane);
      std::vector<int32_t> indices(out_plane);
#pragma omp for schedule(static)
      for (int64_t plane = 0; plane < planes; ++plane) {
        plane_indices(sh, x + plane * in_plane, y.data(), indices.data(), buffers);
        plane_scatter(sh, indices.data(), dy + plane * out_plane, dx + plane * in_plane, inside);
      }
    }
    return;
  }
#pragma omp parallel if (planes * in_plane > 65536)
  {
    LaneBuffers buffers(sh);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g)
      group_backward(sh, x, dy, dx, g * kPlanes, std::min(kPlanes, planes - g * kPlanes), buffers);
  }
}

}  // namespace convnet::cpu
