// CUDA twins of the local response normalisation family.
//
// Mapping (every variant): one thread per (image, chunk of channels, pixel), pixel fastest, so a
// warp reads 32 consecutive floats of one channel plane (coalesced along W). Each thread walks its
// channel chunk keeping the window in registers (indices compile-time after unrolling, so nothing
// goes to local memory). The window sum is recomputed each step (no add/subtract drift), in
// ascending channel order like the CPU twin. The chunk count is picked so that a launch has
// >= ~2^19 threads; a chunk re-reads 2*half (forward) or 4*half (backward) halo channels, mostly
// from L2. Windows wider than kMaxHalf channels each side fall back to direct-sum kernels (global
// re-reads, and a scratch tensor for the backward); slow but rare (the paper uses size 5).
//
// Variant 0 (CONVNET_LRN_VARIANT=0): a ring of x values shifted one channel per step, with kAhead
// extra slots meant to keep kAhead+1 loads in flight. The SASS shows why it reached only 0.49-0.64
// of copy on an H200: the shift moves the value just loaded into the next slot, so each thread
// waits for every load right after issuing it (one load in flight); also IEEE sqrt and division
// (with slow-path calls) and 64-bit channel arithmetic per element.
// Variant 1: channels in blocks of U (8; 4 for the backward of windows wider than 5):
// U loads (2U in the backward: x and dy) issued together into fresh registers, U outputs computed,
// then only the halo values, long arrived, are shifted. int channel indices; s^-3/4 and 1/s from
// MUFU reciprocal square roots (a few ulp; the tests' tolerance is 2e-6 of the largest output).
// Variant 2 (default): the ring forward and the block backward, each direction's faster kernel
// on the H200 (results 2026-11-26-h200-29eff7f, fraction of a same-size copy: forward v0 0.63-0.67,
// v1 0.59-0.61; backward v0 0.50-0.55, v1 0.61-0.67). bench_lrn.py prints a row per variant.
// Tried and removed, none faster than variant 2 on the H200 (the results folders named keep the
// rows): blocks of 16 channels, up to 32 loads in flight a thread (0.60-0.69, 84eeb79); a forward
// over spans of 4 x 256 pixels, 4x fewer and longer streams (0.63-0.67, 47382a3 and deb597b);
// every global load and store a whole 128-byte line through a shared frame (0.20-0.27: issue- and
// barrier-bound, 0627c99). What limits them all (ncu, 0627c99): L2 at 76-81% of its throughput
// with DRAM at 58-63%, long-scoreboard stalls at 50% occupancy. Rows off a line cost ~10%: the
// same kernels on 56x56 planes (3136 floats, every row on a line) reach 0.77 / 0.72 of copy,
// against 0.69 / 0.67 on conv1's 55x55.
//
// Backward, in one pass per chunk: lead index j computes p_j = s_j^-beta and
// t_j = dy_j x_j p_j / s_j; channel i = j - half is then finished as
// dx_i = dy_i p_i - 2 alpha beta x_i sum_{|m-i|<=half} t_m.
//
// ptxas -v (sm_90, CUDA 13.0, -O3), from CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh;
// every kernel: 0 bytes stack frame, 0 bytes spill stores/loads. Registers by
// half-window H (0..4), beta = 3/4 fast path / general powf, with the out-of-range checks
// (store_checked; before them: ring 64/40 and block backward 69/75 at H = 2, the same occupancy)
// and the backward's underflow checks (lrn_t; before them the backward rows read 62/40 58/54 66/56
// 72/64 72/71 and 64/57 64/64 74/72 62/64 64/70: the paper's block backward 74 -> 80, 3 blocks of
// 256 an SM either way; not yet timed on a GPU):
//   lrn_ring_kernel<H>             48/32  54/39  60/40  59/40  56/40
//   lrn_backward_ring_kernel<H>    58/48  55/59  58/61  63/63  71/70
//   lrn_block_kernel<H>            32/48  38/36  36/44  40/40  40/40
//   lrn_backward_block_kernel<H>   64/56  80/64  80/73  63/64  69/70   (U = 4 for H >= 3)
//   lrn_direct_kernel 38, lrn_backward_direct_t_kernel 40, lrn_backward_direct_dx_kernel 40,
//   lrn_redo_kernel 75
// Variant 1 at the paper's H = 2: forward 36 registers (6 blocks of 256 per SM, 8 loads in flight
// each), backward 80 (3 blocks, 16 loads in flight each).
#include <atomic>
#include <cfloat>

#include "../kernels/lrn.h"
#include "../core/device.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kAhead = 4;    // extra loads in flight per thread
constexpr int kMaxHalf = 4;  // ring kernels for size <= 9 (after clipping to the channel count)
// Channels per block of the variant-1 kernels; the backward keeps 4*half + U x values and 3 rings of
// 2*half + U, so wide windows take smaller blocks (U = 8 spilled for half >= 3 on sm_80).
constexpr int kBlockForward = 8;
constexpr int block_backward(int half) { return half >= 3 ? 4 : 8; }

// p, or NaN where s or p leaves float's normal range (the element is then redone in double: see
// csrc/kernels/lrn.h and lrn_redo_kernel).
__device__ __forceinline__ float lrn_checked(float s, float p) {
  return s <= FLT_MAX && p >= FLT_MIN && p <= FLT_MAX ? p : NAN;
}
__device__ __forceinline__ bool lrn_finite(float v) { return fabsf(v) <= FLT_MAX; }  // false for NaN

// t = dy x q (q = s^(-beta-1), checked), or NaN where a digit is lost that 2 alpha beta x_i may
// scale back up: a product under float's normal range that is not exactly 0 (a t of 3e-46 flushed
// to 0 gave a gradient 4x off with alpha = 1e30), or an x whose own 2 alpha beta x is (under
// lrn_x_floor: channel i's t is in its own window, so dx_i is redone too). The elements are then
// redone in double (lrn_redo_kernel). Checked here, once a channel, not at each output: a check of
// 2 alpha beta x_i there took the block backward to 93 registers and a spill, against 80.
__device__ __forceinline__ float lrn_t(float dy, float x, float q, float x_floor) {
  const float d = dy * x, t = d * q;
  // |d| and |t| normal, or d exactly 0 from a zero input; |x| past x_floor, or 0
  const bool zero = (dy == 0.f) | (x == 0.f);
  const bool ok = ((fminf(fabsf(d), fabsf(t)) >= FLT_MIN) | zero) & ((fabsf(x) >= x_floor) | (x == 0.f));
  return ok ? t : NAN;
}
// The |x| under which 2 alpha beta x leaves float's normal range.
__device__ __forceinline__ float lrn_x_floor(const LrnShape& sh) {
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  return two_alpha_beta > 0.f ? FLT_MIN / two_alpha_beta : 0.f;
}

// s^-beta, or NaN out of range (lrn_checked).
template <bool kThreeQuarters>
__device__ __forceinline__ float neg_pow(float s, float neg_beta) {
  if (kThreeQuarters) {
    float r = rsqrtf(s);                  // s^-1/2
    return lrn_checked(s, r * sqrtf(r));  // s^-3/4
  }
  return lrn_checked(s, powf(s, neg_beta));
}

// A call's redo flag: raised by writing this call's token into it, so it needs no zeroing (whatever
// the allocator's block held matches the token with odds of 2^-32, and then lrn_redo_kernel only
// scans for nothing: it rewrites outputs that are not finite, and there are none).
struct Redo {
  int* flag;
  int token;
};

// v to *out; a result out of float's range (see csrc/kernels/lrn.h) also raises the redo flag, for
// lrn_redo_kernel. The branch holds one store, so the kernels keep their registers (a call to the
// double-precision path here took the backward block kernel from 69 to 122).
__device__ __forceinline__ void store_checked(float* out, float v, const Redo& redo) {
  if (!lrn_finite(v)) *redo.flag = redo.token;
  *out = v;
}

struct Split {
  int64_t chunk, nchunks, total;  // channels per chunk, chunks, threads
};

// The c channels cut into `want` chunks, but at least 1 and at most one per 32 channels; all of
// `chunk` channels but the last.
struct Chunks {
  int64_t chunk, count;
};
Chunks channel_chunks(int64_t c, int64_t want) {
  const int64_t most = (c + 31) / 32;
  int64_t n = want > most ? most : want;
  if (n < 1) n = 1;
  const int64_t chunk = (c + n - 1) / n;
  return Chunks{chunk, (c + chunk - 1) / chunk};
}

Split split_channels(const LrnShape& sh) {
  const int64_t pixels = sh.n * sh.hw;
  const Chunks ch = channel_chunks(sh.c, ((int64_t)1 << 19) / (pixels > 0 ? pixels : 1));  // ~2^19 threads
  return Split{ch.chunk, ch.count, pixels * ch.count};
}

// Which (image, chunk, pixel) thread `idx` is: the base offset of its pixel in channel 0 and
// its channel range [c0, c1).
struct Place {
  int64_t base, c0, c1;
};
__device__ __forceinline__ Place place(const LrnShape& sh, const Split& sp, int64_t idx) {
  const int64_t p = idx % sh.hw, rest = idx / sh.hw;
  const int64_t cb = rest % sp.nchunks, n = rest / sp.nchunks;
  const int64_t c0 = cb * sp.chunk;
  return Place{n * sh.c * sh.hw + p, c0, min(sh.c, c0 + sp.chunk)};
}

// x at channel j of this pixel, 0 outside [0, limit).
__device__ __forceinline__ float load_or_zero(const float* __restrict__ v, int64_t j, int64_t limit, int64_t hw) {
  return (j >= 0 && j < limit) ? __ldg(v + j * hw) : 0.f;
}

template <int H, bool kThreeQuarters>
__global__ void __launch_bounds__(kThreads) lrn_ring_kernel(const LrnShape sh, const Split sp,
                                                             const float* __restrict__ x, float* __restrict__ y,
                                                             const Redo redo) {
  constexpr int R = 2 * H + 1 + kAhead;  // win[m] = x_{i-H+m}
  const int64_t hw = sh.hw;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < sp.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const Place pl = place(sh, sp, idx);
    const float* xp = x + pl.base;
    float* yp = y + pl.base;
    const int64_t limit = min(sh.c, pl.c1 + H);  // last channel this chunk reads, + 1
    float win[R];
#pragma unroll
    for (int m = 0; m < R - 1; ++m) win[m] = load_or_zero(xp, pl.c0 - H + m, limit, hw);
    for (int64_t i = pl.c0; i < pl.c1; ++i) {
      win[R - 1] = load_or_zero(xp, i + H + kAhead, limit, hw);
      float sum = 0.f;
#pragma unroll
      for (int m = 0; m <= 2 * H; ++m) sum += win[m] * win[m];
      store_checked(yp + i * hw, win[H] * neg_pow<kThreeQuarters>(sh.k + sh.alpha * sum, -sh.beta), redo);
#pragma unroll
      for (int m = 0; m < R - 1; ++m) win[m] = win[m + 1];
    }
  }
}

template <int H, bool kThreeQuarters>
__global__ void __launch_bounds__(kThreads) lrn_backward_ring_kernel(const LrnShape sh, const Split sp,
                                                                      const float* __restrict__ x,
                                                                      const float* __restrict__ dy,
                                                                      float* __restrict__ dx, const Redo redo) {
  constexpr int RX = 2 * H + 1 + kAhead;  // X[m] = x_{j-H+m}
  constexpr int RD = H + 1 + kAhead;      // D[m] = dy_{j-H+m}
  const int64_t hw = sh.hw;
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < sp.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const Place pl = place(sh, sp, idx);
    const float* xp = x + pl.base;
    const float* dyp = dy + pl.base;
    float* dxp = dx + pl.base;
    const int64_t x_limit = min(sh.c, pl.c1 + 2 * H), dy_limit = min(sh.c, pl.c1 + H);
    float X[RX], D[RD], P[H + 1], T[2 * H + 1];  // P[m] = p_{j-H+m}, T[m] = t_{j-2H+m}
#pragma unroll
    for (int m = 0; m < RX - 1; ++m) X[m] = load_or_zero(xp, pl.c0 - 2 * H + m, x_limit, hw);
#pragma unroll
    for (int m = 0; m < RD - 1; ++m) D[m] = load_or_zero(dyp, pl.c0 - 2 * H + m, dy_limit, hw);
#pragma unroll
    for (int m = 0; m <= H; ++m) P[m] = 0.f;
#pragma unroll
    for (int m = 0; m <= 2 * H; ++m) T[m] = 0.f;
    for (int64_t j = pl.c0 - H; j < pl.c1 + H; ++j) {
      X[RX - 1] = load_or_zero(xp, j + H + kAhead, x_limit, hw);
      D[RD - 1] = load_or_zero(dyp, j + kAhead, dy_limit, hw);
      float sum = 0.f;
#pragma unroll
      for (int m = 0; m <= 2 * H; ++m) sum += X[m] * X[m];
      const float s = sh.k + sh.alpha * sum;
      const float p = neg_pow<kThreeQuarters>(s, -sh.beta);
      P[H] = p;
      T[2 * H] = (j >= 0 && j < sh.c) ? lrn_t(D[H], X[H], lrn_checked(s, p / s), lrn_x_floor(sh)) : 0.f;
      const int64_t i = j - H;
      if (i >= pl.c0) {
        float tsum = 0.f;
#pragma unroll
        for (int m = 0; m <= 2 * H; ++m) tsum += T[m];
        store_checked(dxp + i * hw, D[0] * P[0] - two_alpha_beta * X[0] * tsum, redo);
      }
#pragma unroll
      for (int m = 0; m < RX - 1; ++m) X[m] = X[m + 1];
#pragma unroll
      for (int m = 0; m < RD - 1; ++m) D[m] = D[m + 1];
#pragma unroll
      for (int m = 0; m < H; ++m) P[m] = P[m + 1];
#pragma unroll
      for (int m = 0; m < 2 * H; ++m) T[m] = T[m + 1];
    }
  }
}

// ---- variant 1: channels in blocks of U, U loads issued together (variant 2's backward) ----
// The ring kernels above shift their ring every channel, and the shift moves the value just
// loaded, so each thread waits for each load right after issuing it (SASS: MOV of the LDG
// result in the same iteration): about one load in flight per thread, whatever kAhead. Here a
// thread loads U channels into fresh registers at once, computes U outputs from them (indices
// compile-time after unrolling), and only then shifts the 2*half (4*half) halo values it keeps,
// which have long arrived. Channel indices are int; s^-3/4 is MUFU-only.

__device__ __forceinline__ float load_or_zero32(const float* __restrict__ v, int j, int limit, int64_t hw) {
  return (j >= 0 && j < limit) ? __ldg(v + (int64_t)j * hw) : 0.f;
}

// s^-beta; for beta = 3/4 from two hardware reciprocal square roots (a few ulp, no IEEE sqrt); NaN
// out of range (lrn_checked).
template <bool kThreeQuarters>
__device__ __forceinline__ float neg_pow_fast(float s, float neg_beta) {
  if (kThreeQuarters) {
    const float r = rsqrtf(s);                 // s^-1/2
    return lrn_checked(s, r * r * rsqrtf(r));  // s^-1 * s^1/4
  }
  return lrn_checked(s, powf(s, neg_beta));
}

// y_i = x_i s_i^-beta from the 2H+1 x values of i's window (xw[0] = x_{i-H}), the squares summed
// in ascending channel order.
template <int H, bool kThreeQuarters>
__device__ __forceinline__ float lrn_y(const LrnShape& sh, const float* xw) {
  float sum = 0.f;
#pragma unroll
  for (int m = 0; m <= 2 * H; ++m) sum += xw[m] * xw[m];
  return xw[H] * neg_pow_fast<kThreeQuarters>(sh.k + sh.alpha * sum, -sh.beta);
}

template <int H, bool kThreeQuarters, int U>
__global__ void __launch_bounds__(kThreads) lrn_block_kernel(const LrnShape sh, const Split sp,
                                                              const float* __restrict__ x, float* __restrict__ y,
                                                              const Redo redo) {
  constexpr int R = 2 * H + U;  // win[m] = x_{i0-H+m}
  const int64_t hw = sh.hw;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < sp.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const Place pl = place(sh, sp, idx);
    const float* xp = x + pl.base;
    float* yp = y + pl.base;
    const int c0 = (int)pl.c0, c1 = (int)pl.c1, limit = (int)min(sh.c, pl.c1 + H);
    float win[R];
#pragma unroll
    for (int m = 0; m < 2 * H; ++m) win[m] = load_or_zero32(xp, c0 - H + m, limit, hw);
    for (int i0 = c0; i0 < c1; i0 += U) {
#pragma unroll
      for (int u = 0; u < U; ++u) win[2 * H + u] = load_or_zero32(xp, i0 + H + u, limit, hw);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (i0 + u < c1) store_checked(yp + (int64_t)(i0 + u) * hw, lrn_y<H, kThreeQuarters>(sh, win + u), redo);
#pragma unroll
      for (int m = 0; m < 2 * H; ++m) win[m] = win[m + U];
    }
  }
}

// p_j = s_j^-beta and t_j = dy_j x_j p_j / s_j (0 outside the channels), from the 2H+1 x values
// of j's window (xw[0] = x_{j-H}); NaN out of range (lrn_checked).
template <int H, bool kThreeQuarters>
__device__ __forceinline__ void lrn_t_p(const LrnShape& sh, int j, const float* xw, float dyj, float& t, float& p) {
  float sum = 0.f;
#pragma unroll
  for (int m = 0; m <= 2 * H; ++m) sum += xw[m] * xw[m];
  const float s = sh.k + sh.alpha * sum;
  float p_over_s;
  if (kThreeQuarters) {  // s^-1 = r^2 from the same reciprocal square root: no IEEE division
    const float r = rsqrtf(s), inv_s = r * r;  // as neg_pow_fast
    p = lrn_checked(s, inv_s * rsqrtf(r));
    p_over_s = p * inv_s;
  } else {
    p = lrn_checked(s, powf(s, -sh.beta));
    p_over_s = p / s;
  }
  t = (j >= 0 && j < sh.c) ? lrn_t(dyj, xw[H], lrn_checked(s, p_over_s), lrn_x_floor(sh)) : 0.f;
}

// Block i0..i0+U-1 needs t_j, p_j for j in [i0-H, i0+U+H), hence x in [i0-2H, i0+U+2H).
template <int H, bool kThreeQuarters, int U>
__global__ void __launch_bounds__(kThreads) lrn_backward_block_kernel(const LrnShape sh, const Split sp,
                                                                       const float* __restrict__ x,
                                                                       const float* __restrict__ dy,
                                                                       float* __restrict__ dx, const Redo redo) {
  constexpr int RX = 4 * H + U;  // X[m] = x_{i0-2H+m}
  constexpr int RT = 2 * H + U;  // D[m] = dy_{i0-H+m}, T[m] = t_{i0-H+m}, P[m] = p_{i0-H+m}
  const int64_t hw = sh.hw;
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < sp.total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const Place pl = place(sh, sp, idx);
    const float* xp = x + pl.base;
    const float* dyp = dy + pl.base;
    float* dxp = dx + pl.base;
    const int c0 = (int)pl.c0, c1 = (int)pl.c1;
    const int x_limit = (int)min(sh.c, pl.c1 + 2 * H), dy_limit = (int)min(sh.c, pl.c1 + H);
    float X[RX], D[RT], T[RT], P[RT];
#pragma unroll
    for (int m = 0; m < 4 * H; ++m) X[m] = load_or_zero32(xp, c0 - 2 * H + m, x_limit, hw);
#pragma unroll
    for (int m = 0; m < 2 * H; ++m) D[m] = load_or_zero32(dyp, c0 - H + m, dy_limit, hw);
#pragma unroll
    for (int m = 0; m < 2 * H; ++m) lrn_t_p<H, kThreeQuarters>(sh, c0 - H + m, X + m, D[m], T[m], P[m]);
    for (int i0 = c0; i0 < c1; i0 += U) {
#pragma unroll
      for (int u = 0; u < U; ++u) {
        X[4 * H + u] = load_or_zero32(xp, i0 + 2 * H + u, x_limit, hw);
        D[2 * H + u] = load_or_zero32(dyp, i0 + H + u, dy_limit, hw);
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
        lrn_t_p<H, kThreeQuarters>(sh, i0 + H + u, X + 2 * H + u, D[2 * H + u], T[2 * H + u], P[2 * H + u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (i0 + u < c1) {
          float tsum = 0.f;
#pragma unroll
          for (int m = 0; m <= 2 * H; ++m) tsum += T[u + m];
          store_checked(dxp + (int64_t)(i0 + u) * hw, D[H + u] * P[H + u] - two_alpha_beta * X[2 * H + u] * tsum,
                        redo);
        }
      }
#pragma unroll
      for (int m = 0; m < 4 * H; ++m) X[m] = X[m + U];
#pragma unroll
      for (int m = 0; m < 2 * H; ++m) {
        D[m] = D[m + U];
        T[m] = T[m + U];
        P[m] = P[m + U];
      }
    }
  }
}

__device__ __forceinline__ float window_denominator(const LrnShape& sh, const float* __restrict__ xp, int64_t i,
                                                    int64_t half) {
  const int64_t lo = i - half < 0 ? 0 : i - half, hi = min(sh.c - 1, i + half);
  float sum = 0.f;
  for (int64_t j = lo; j <= hi; ++j) {
    float v = __ldg(xp + j * sh.hw);
    sum += v * v;
  }
  return sh.k + sh.alpha * sum;
}

// Element e = (n, c, p) of a dense (n, c, hw) tensor: the offset of (n, 0, p) and c.
__device__ __forceinline__ void element(const LrnShape& sh, int64_t e, int64_t& base, int64_t& c) {
  const int64_t p = e % sh.hw, rest = e / sh.hw;
  c = rest % sh.c;
  base = (rest / sh.c) * sh.c * sh.hw + p;
}

__global__ void lrn_direct_kernel(const LrnShape sh, int64_t half, const float* __restrict__ x,
                                  float* __restrict__ y, const Redo redo) {
  const int64_t total = sh.n * sh.c * sh.hw;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t base, c;
    element(sh, e, base, c);
    const float s = window_denominator(sh, x + base, c, half);
    store_checked(y + e, x[e] * lrn_checked(s, powf(s, -sh.beta)), redo);
  }
}

// t = dy x s^(-beta-1), into scratch (NaN out of range: lrn_checked)
__global__ void lrn_backward_direct_t_kernel(const LrnShape sh, int64_t half, const float* __restrict__ x,
                                             const float* __restrict__ dy, float* __restrict__ t) {
  const int64_t total = sh.n * sh.c * sh.hw;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t base, c;
    element(sh, e, base, c);
    const float s = window_denominator(sh, x + base, c, half);
    t[e] = lrn_t(dy[e], x[e], lrn_checked(s, lrn_checked(s, powf(s, -sh.beta)) / s), lrn_x_floor(sh));
  }
}

__global__ void lrn_backward_direct_dx_kernel(const LrnShape sh, int64_t half, const float* __restrict__ x,
                                              const float* __restrict__ dy, const float* __restrict__ t,
                                              float* __restrict__ dx, const Redo redo) {
  const int64_t total = sh.n * sh.c * sh.hw;
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t base, c;
    element(sh, e, base, c);
    const float s = window_denominator(sh, x + base, c, half);
    const int64_t lo = c - half < 0 ? 0 : c - half, hi = min(sh.c - 1, c + half);
    float tsum = 0.f;
    for (int64_t j = lo; j <= hi; ++j) tsum += t[base + j * sh.hw];
    store_checked(dx + e, dy[e] * lrn_checked(s, powf(s, -sh.beta)) - two_alpha_beta * x[e] * tsum, redo);
  }
}

// The elements the kernels above flagged (store_checked), redone in double (csrc/kernels/lrn.h):
// one block over the whole output (dx when dy is given, else y), after them on the stream. Without
// the flag it returns at once, a launch's cost; with it, it scans the output (slowly: only a
// diverging network gets here, and a NaN input flags every call, for an output that stays NaN).
constexpr int kRedoThreads = 512;
__global__ void __launch_bounds__(kRedoThreads, 1) lrn_redo_kernel(const LrnShape sh, const float* __restrict__ x,
                                                                 const float* __restrict__ dy,
                                                                 float* __restrict__ out, const Redo redo) {
  if (*redo.flag != redo.token) return;
  const int64_t total = sh.n * sh.c * sh.hw;
  for (int64_t e = threadIdx.x; e < total; e += blockDim.x) {
    if (lrn_finite(out[e])) continue;
    int64_t base, c;
    element(sh, e, base, c);
    out[e] = dy ? lrn_dx_exact(sh, x + base, dy + base, c) : lrn_y_exact(sh, x + base, c);
  }
}

int64_t clipped_half(const LrnShape& sh) {
  const int64_t half = sh.size / 2;
  return half < sh.c - 1 ? half : sh.c - 1;  // a wider window sees the same channels
}

template <int H, bool kThreeQuarters>
void launch_forward(const LrnShape& sh, const Split& sp, const float* x, float* y, const Redo& redo) {
  lrn_ring_kernel<H, kThreeQuarters><<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, y, redo);
  CUDA_CHECK_LAUNCH("lrn_ring_kernel");
}

template <int H, bool kThreeQuarters>
void launch_backward(const LrnShape& sh, const Split& sp, const float* x, const float* dy, float* dx,
                     const Redo& redo) {
  lrn_backward_ring_kernel<H, kThreeQuarters>
      <<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, dy, dx, redo);
  CUDA_CHECK_LAUNCH("lrn_backward_ring_kernel");
}

// Calls F::template run<H, kThreeQuarters>() for the clipped half-window, if a ring kernel has it.
template <class F>
bool with_ring(const LrnShape& sh, F&& f) {
  const bool b34 = sh.beta == 0.75f;
  switch (clipped_half(sh)) {
    case 0: b34 ? f.template run<0, true>() : f.template run<0, false>(); return true;
    case 1: b34 ? f.template run<1, true>() : f.template run<1, false>(); return true;
    case 2: b34 ? f.template run<2, true>() : f.template run<2, false>(); return true;
    case 3: b34 ? f.template run<3, true>() : f.template run<3, false>(); return true;
    case 4: b34 ? f.template run<4, true>() : f.template run<4, false>(); return true;
    default: return false;
  }
}
static_assert(kMaxHalf == 4, "with_ring lists the ring kernels 0..kMaxHalf");

template <int H, bool kThreeQuarters>
void launch_block_forward(const LrnShape& sh, const Split& sp, const float* x, float* y, const Redo& redo) {
  lrn_block_kernel<H, kThreeQuarters, kBlockForward>
      <<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, y, redo);
  CUDA_CHECK_LAUNCH("lrn_block_kernel");
}

template <int H, bool kThreeQuarters>
void launch_block_backward(const LrnShape& sh, const Split& sp, const float* x, const float* dy, float* dx,
                           const Redo& redo) {
  lrn_backward_block_kernel<H, kThreeQuarters, block_backward(H)>
      <<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, dy, dx, redo);
  CUDA_CHECK_LAUNCH("lrn_backward_block_kernel");
}

struct Forward {
  const LrnShape& sh; const Split& sp; const float* x; float* y; Redo redo;
  template <int H, bool B> void run() { launch_forward<H, B>(sh, sp, x, y, redo); }
};
struct Backward {
  const LrnShape& sh; const Split& sp; const float* x; const float* dy; float* dx; Redo redo;
  template <int H, bool B> void run() { launch_backward<H, B>(sh, sp, x, dy, dx, redo); }
};
struct BlockForward {
  const LrnShape& sh; const Split& sp; const float* x; float* y; Redo redo;
  template <int H, bool B> void run() { launch_block_forward<H, B>(sh, sp, x, y, redo); }
};
struct BlockBackward {
  const LrnShape& sh; const Split& sp; const float* x; const float* dy; float* dx; Redo redo;
  template <int H, bool B> void run() { launch_block_backward<H, B>(sh, sp, x, dy, dx, redo); }
};

// A redo flag for one call, from the caching allocator (which orders its reuse by another
// thread's stream), freed stream-ordered after lrn_redo_kernel, with a token of its own (see Redo).
// One flag a thread, made by cudaMalloc and never freed, leaked device memory and stalled the GPU
// in cudaMalloc at every parallel step (Net runs each tower's step in a new thread).
struct RedoFlag {
  GpuScratch memory{sizeof(int)};
  Redo redo{static_cast<int*>(memory.p), next_token()};
  static int next_token() {
    static std::atomic<unsigned> calls{0};
    return (int)(++calls * 2654435761u);  // spread out: a stale flag holds an earlier call's token
  }
};

void launch_redo(const LrnShape& sh, const float* x, const float* dy, float* out, const Redo& redo) {
  lrn_redo_kernel<<<1, kRedoThreads, 0, stream()>>>(sh, x, dy, out, redo);
  CUDA_CHECK_LAUNCH("lrn_redo_kernel");
}

}  // namespace

void lrn(const LrnShape& sh, const float* x, float* y) {
  const Split sp = split_channels(sh);
  const RedoFlag flag;
  const Redo& redo = flag.redo;
  // variants 0 and 2: the ring forward (measured faster than the block forward on the H200);
  // 1: blocks of 8 channels
  const bool ring = lrn_variant() == 1 ? with_ring(sh, BlockForward{sh, sp, x, y, redo})
                                       : with_ring(sh, Forward{sh, sp, x, y, redo});
  if (!ring) {
    const int64_t total = sh.n * sh.c * sh.hw;
    lrn_direct_kernel<<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(sh, clipped_half(sh), x, y, redo);
    CUDA_CHECK_LAUNCH("lrn_direct_kernel");
  }
  launch_redo(sh, x, nullptr, y, redo);
}

void lrn_backward(const LrnShape& sh, const float* x, const float* dy, float* dx) {
  const Split sp = split_channels(sh);
  const RedoFlag flag;
  const Redo& redo = flag.redo;
  // variants 1 and 2: the block backward (measured faster than the ring backward on the H200);
  // 0: the ring backward
  const bool ring = lrn_variant() == 0 ? with_ring(sh, Backward{sh, sp, x, dy, dx, redo})
                                       : with_ring(sh, BlockBackward{sh, sp, x, dy, dx, redo});
  if (!ring) {
    const int64_t total = sh.n * sh.c * sh.hw, half = clipped_half(sh);
    const GpuScratch t(sizeof(float) * (size_t)total);  // the direct backward's t
    float* tp = static_cast<float*>(t.p);
    const unsigned blocks = blocks_for(total, kThreads);
    lrn_backward_direct_t_kernel<<<blocks, kThreads, 0, stream()>>>(sh, half, x, dy, tp);
    CUDA_CHECK_LAUNCH("lrn_backward_direct_t_kernel");
    lrn_backward_direct_dx_kernel<<<blocks, kThreads, 0, stream()>>>(sh, half, x, dy, tp, dx, redo);
    CUDA_CHECK_LAUNCH("lrn_backward_direct_dx_kernel");
  }
  launch_redo(sh, x, dy, dx, redo);
}

}  // namespace convnet::cuda
