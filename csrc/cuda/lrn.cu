// CUDA twins of the local response normalisation family.
//
// Mapping (both variants): one thread per (image, chunk of channels, pixel), pixel fastest, so a
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
// Variant 3: variant 1 with blocks of 16 channels (forward; backward for half <= 2); variant 4:
// the ring forward and variant 3's backward (so each direction's winner can be the default).
// Variant 5: a forward over spans of pixels (lrn_span_kernel: why and the prediction there) and
// variant 2's backward; measured no faster (0.63-0.67 of copy, 47382a3 and deb597b).
// Variant 6: both directions with every global load and store a whole 128-byte line, through
// shared memory (lrn_aligned_kernel; why and how there). Written without a GPU, checked by
// tools/emulate_lrn_pool.py (which also checks that each row a block loads or stores starts on a
// line). Every variant above lands at 0.6-0.69 of copy, whatever its loads in flight or stream
// count; what they share is rows starting off a line (3025 and 729 floats a plane). Prediction
// (H200): if bench_lrn.py's 56x56 probe rows (aligned planes, variant 2) reach ~0.8 of copy, v6
// reaches 0.75-0.85 on 55x55 and 27x27 (its extra reads: 10 lines for 8 lines' outputs, L2 hits
// mostly); if the probe stays near 0.65, alignment is not the limit and v6 will be no faster.
// Why: at H = 2 variant 1's
// forward has 6 blocks of 256 threads per SM with 8 loads (32 B) each in flight, ~49 KB an SM,
// below the ~55-60 KB that Little's law asks of an H200 SM at ~4.5 TB/s and ~1.5-2 us loaded
// latency; U = 16 takes 48 registers (5 blocks), so ~80 KB. conv1 (96 channels, chunk of 96:
// 6 blocks of 16) has no partial block; conv2 (chunks of 52) a last block of 4 with 12 loads
// predicated off. Prediction (H200): forward conv1 ~80-85 us (0.8 of copy; v1 took 111-115 us),
// unless the limit is instruction issue (~20 instructions an element). Backward U = 16 (half <= 2): 112 registers, 2 blocks an SM
// with 32 loads (128 B) in flight a thread, ~64 KB an SM (U = 8: 68 registers, 3 blocks, ~49 KB),
// and 1.25 instead of 1.5 t/p evaluations an element (the halo); conv2's chunks of 52 channels
// waste 12 of 64 in the last block. Prediction: backward conv1 0.7-0.75 of copy (v1 0.61-0.67).
// Both refuted by the H200 run of 84eeb79 (every variant 0.60-0.69 of copy:
// benchmarks/results/2026-11-26-local3-predictions.md), so variant 2 stayed the default.
//
// Backward, in one pass per chunk: lead index j computes p_j = s_j^-beta and
// t_j = dy_j x_j p_j / s_j; channel i = j - half is then finished as
// dx_i = dy_i p_i - 2 alpha beta x_i sum_{|m-i|<=half} t_m.
//
// ptxas -v (sm_90, CUDA 13.0, -O3), from CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh;
// every kernel but four: 0 bytes stack frame, 0 bytes spill stores/loads. Registers by
// half-window H (0..4), beta = 3/4 fast path / general powf:
//   lrn_ring_kernel<H>             48/32  56/39  64/40  61/40  64/40
//   lrn_backward_ring_kernel<H>    60/42  58/54  65/57  72/63  78/70
//   lrn_block_kernel<H>            32/32  38/36  34/44  40/40  40/44
//   lrn_block_kernel<H>, U = 16    44/48  48/44  48/48  48/48  48/48   (variant 3)
//   lrn_backward_block_kernel<H>, U = 16 (H <= 2; variants 3, 4)   103/111  106/108  112/114
//   lrn_backward_block_kernel<H>   58/57  75/67  69/75  60/68  64/75   (U = 4 for H >= 3)
//   lrn_span_kernel<H> (variant 5) 56/64  64/64  72/80  87/91  98/100; no stack except H = 1 with
//                                  general beta on sm_90 (8 bytes spilled; sm_80 none)
//   lrn_direct_kernel 40, lrn_backward_direct_t_kernel 40, lrn_backward_direct_dx_kernel 40
//   lrn_aligned_kernel<H> (variant 6)           51/51  52/52  48/54  48/48  48/48; shared 9-18 KB
//   lrn_backward_aligned_kernel<H> (variant 6)  39/48  57/48  48/48  48/48  53/48; shared 18-41 KB;
//                                               12-20 bytes spilled with general beta at H >= 2
// Variant 1 at the paper's H = 2: forward 34 registers (6 blocks of 256 per SM, 8 loads in flight
// each), backward 69 (3 blocks, 16 loads in flight each).
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
constexpr int kBlockForwardWide = 16;  // variant 3: twice the loads in flight per thread
constexpr int block_backward(int half) { return half >= 3 ? 4 : 8; }
// Variants 3 and 4: 16 channels a backward block for half <= 2 (112 registers at half = 2, no
// spills: 2 blocks an SM with 32 loads in flight each, against 3 with 16 at U = 8).
constexpr int block_backward_wide(int half) { return half >= 3 ? 4 : 16; }

template <bool kThreeQuarters>
__device__ __forceinline__ float neg_pow(float s, float neg_beta) {
  if (kThreeQuarters) {
    float r = rsqrtf(s);  // s^-1/2
    return r * sqrtf(r);  // s^-3/4
  }
  return powf(s, neg_beta);
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
                                                             const float* __restrict__ x, float* __restrict__ y) {
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
      yp[i * hw] = win[H] * neg_pow<kThreeQuarters>(sh.k + sh.alpha * sum, -sh.beta);
#pragma unroll
      for (int m = 0; m < R - 1; ++m) win[m] = win[m + 1];
    }
  }
}

template <int H, bool kThreeQuarters>
__global__ void __launch_bounds__(kThreads) lrn_backward_ring_kernel(const LrnShape sh, const Split sp,
                                                                      const float* __restrict__ x,
                                                                      const float* __restrict__ dy,
                                                                      float* __restrict__ dx) {
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
      T[2 * H] = (j >= 0 && j < sh.c) ? D[H] * X[H] * p / s : 0.f;
      const int64_t i = j - H;
      if (i >= pl.c0) {
        float tsum = 0.f;
#pragma unroll
        for (int m = 0; m <= 2 * H; ++m) tsum += T[m];
        dxp[i * hw] = D[0] * P[0] - two_alpha_beta * X[0] * tsum;
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

// s^-beta; for beta = 3/4 from two hardware reciprocal square roots (a few ulp, no IEEE sqrt).
template <bool kThreeQuarters>
__device__ __forceinline__ float neg_pow_fast(float s, float neg_beta) {
  if (kThreeQuarters) {
    const float r = rsqrtf(fminf(s, FLT_MAX));  // s^-1/2; s = inf clamped as in the CPU twin (r > 0)
    return r * r * rsqrtf(r);                    // s^-1 * s^1/4
  }
  return powf(s, neg_beta);
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
                                                              const float* __restrict__ x, float* __restrict__ y) {
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
        if (i0 + u < c1) yp[(int64_t)(i0 + u) * hw] = lrn_y<H, kThreeQuarters>(sh, win + u);
#pragma unroll
      for (int m = 0; m < 2 * H; ++m) win[m] = win[m + U];
    }
  }
}

// p_j = s_j^-beta and t_j = dy_j x_j p_j / s_j (0 outside the channels), from the 2H+1 x values
// of j's window (xw[0] = x_{j-H}).
template <int H, bool kThreeQuarters>
__device__ __forceinline__ void lrn_t_p(const LrnShape& sh, int j, const float* xw, float dyj, float& t, float& p) {
  float sum = 0.f;
#pragma unroll
  for (int m = 0; m <= 2 * H; ++m) sum += xw[m] * xw[m];
  const float s = sh.k + sh.alpha * sum;
  float p_over_s;
  if (kThreeQuarters) {  // s^-1 = r^2 from the same reciprocal square root: no IEEE division
    const float r = rsqrtf(fminf(s, FLT_MAX)), inv_s = r * r;  // as neg_pow_fast
    p = inv_s * rsqrtf(r);
    p_over_s = p * inv_s;
  } else {
    p = powf(s, -sh.beta);
    p_over_s = p / s;
  }
  t = (j >= 0 && j < sh.c) ? dyj * xw[H] * p_over_s : 0.f;
}

// Block i0..i0+U-1 needs t_j, p_j for j in [i0-H, i0+U+H), hence x in [i0-2H, i0+U+2H).
template <int H, bool kThreeQuarters, int U>
__global__ void __launch_bounds__(kThreads) lrn_backward_block_kernel(const LrnShape sh, const Split sp,
                                                                       const float* __restrict__ x,
                                                                       const float* __restrict__ dy,
                                                                       float* __restrict__ dx) {
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
          dxp[(int64_t)(i0 + u) * hw] = D[H + u] * P[H + u] - two_alpha_beta * X[2 * H + u] * tsum;
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

// ---- variant 5: the forward over spans of pixels, a few channels at a time ----
// Every kernel above keeps loads in flight by walking several channels at once, so a block
// reads U channel rows of its 256 pixels (1 KB each) together: ~6,000 separate 1 KB streams
// across an H200 at once, against ~1,000 long ones for a copy. The measured forwards rank by
// that count, not by bytes in flight: the ring (about one channel at a time, one load in flight)
// 0.63-0.67 of copy, blocks of 8 channels 0.59-0.61, of 16 0.61. Here a thread takes
// kSpanPixels pixels kThreads apart and kSpanChannels channels at a time: the same 16 loads in
// flight as 16-channel blocks, but a block reads kSpanChannels rows of 4 KB, 4x fewer and 4x
// longer streams (72 registers at the paper's window: 3 blocks an SM). Prediction (H200):
// forward 0.75-0.85 of copy if the stream count is the limit; unchanged (~0.6-0.67) refutes
// that. Refuted: 0.63-0.67 in the H200 runs of 47382a3 and deb597b (the ring forward 0.68-0.69
// in the same runs). The sums run in the same order as the other kernels (the same bits as
// variant 1's forward).
constexpr int kSpanPixels = 4, kSpanChannels = 4;

// Blocks: (image, chunk of channels, span of kThreads * kSpanPixels pixels), with as many chunks
// as bring the grid near 1,000 blocks (conv1 at batch 128: 2 chunks of 48 channels x 3 spans x 128
// images, 768 blocks).
struct SpanSplit {
  int64_t chunk, nchunks, spans, blocks;
};

SpanSplit split_spans(const LrnShape& sh) {
  const int64_t span = (int64_t)kThreads * kSpanPixels, spans = (sh.hw + span - 1) / span;
  const int64_t per_chunk = sh.n * spans;
  const Chunks ch = channel_chunks(sh.c, 1024 / (per_chunk > 0 ? per_chunk : 1));
  return SpanSplit{ch.chunk, ch.count, spans, per_chunk * ch.count};
}

template <int H, bool kThreeQuarters>
__global__ void __launch_bounds__(kThreads) lrn_span_kernel(const LrnShape sh, const SpanSplit sp,
                                                             const float* __restrict__ x, float* __restrict__ y) {
  constexpr int U = kSpanChannels, PX = kSpanPixels, R = 2 * H + U;  // win[j][m] = x_{i0-H+m} at pixel j
  const int64_t hw = sh.hw;
  for (int64_t b = blockIdx.x; b < sp.blocks; b += gridDim.x) {
    const int64_t span = b % sp.spans, rest = b / sp.spans, cb = rest % sp.nchunks, n = rest / sp.nchunks;
    const int c0 = (int)(cb * sp.chunk), c1 = (int)min(sh.c, cb * sp.chunk + sp.chunk);
    const int limit = (int)min(sh.c, (int64_t)c1 + H);
    const int64_t p0 = span * kThreads * PX + threadIdx.x;
    const float* xp = x + n * sh.c * hw + p0;
    float* yp = y + n * sh.c * hw + p0;
    bool in[PX];
#pragma unroll
    for (int j = 0; j < PX; ++j) in[j] = p0 + j * kThreads < hw;
    float win[PX][R];
#pragma unroll
    for (int m = 0; m < 2 * H; ++m)
#pragma unroll
      for (int j = 0; j < PX; ++j) win[j][m] = in[j] ? load_or_zero32(xp + j * kThreads, c0 - H + m, limit, hw) : 0.f;
    for (int i0 = c0; i0 < c1; i0 += U) {
#pragma unroll
      for (int u = 0; u < U; ++u)
#pragma unroll
        for (int j = 0; j < PX; ++j)
          win[j][2 * H + u] = in[j] ? load_or_zero32(xp + j * kThreads, i0 + H + u, limit, hw) : 0.f;
#pragma unroll
      for (int j = 0; j < PX; ++j)
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (in[j] && i0 + u < c1) yp[j * kThreads + (int64_t)(i0 + u) * hw] = lrn_y<H, kThreeQuarters>(sh, win[j] + u);
#pragma unroll
      for (int j = 0; j < PX; ++j)
#pragma unroll
        for (int m = 0; m < 2 * H; ++m) win[j][m] = win[j][m + U];
    }
  }
}

// ---- variant 6: every global access a whole 128-byte line, through shared memory ----
// The kernels above read and write a channel row from its first pixel on. A 55x55 plane is 3025
// floats, so most rows start off a line: a warp's 32 floats then span two lines (5 sectors, and
// two L2 requests instead of one), in every load and store (ncu on the ring forward: L2 80% busy
// with DRAM at 58%). Here a block takes image n, a chunk of channels and a span of kAlignedSpan
// pixels, and
//   loads each channel row it needs as whole lines of the tensor (kAlignedLoads floats from a
//     line start; the first and last lines are shared with the neighbouring spans) into a shared
//     frame that is the same for every channel: frame index j holds pixel s0 - 32 + j;
//   writes channel i's outputs at pixels s0 - d_i + t (thread t), d_i the distance of pixel s0
//     of row i of the output past a line start, so that each warp stores one whole line. The
//     spans overlap by up to 31 pixels in the frame, not in what they write.
// The sums run in the same order as the other kernels (ascending channels, s^-3/4 from
// neg_pow_fast). Frame rows sit in rings of channels, a row c at c % R; U channels a step
// between barriers (8 forward; 4 backward, whose four rings would not fit in 48 KB otherwise).
constexpr int kAlignedSpan = kThreads;             // output pixels a block, a channel
constexpr int kFrame = kAlignedSpan + 32;          // frame rows: pixels s0 - 32 .. s0 + kAlignedSpan - 1
constexpr int kAlignedLoads = kAlignedSpan + 64;   // floats loaded a row: the <= 10 lines over pixels s0-31 .. s0+255
constexpr int kAlignedForward = 8, kAlignedBackward = 4;  // channels a step

// Blocks: (image, chunk of channels, span of pixels), the spans covering hw + 31 pixels (the
// output rows start up to 31 pixels before their span), with as many chunks as bring the grid
// near 2,048 blocks (conv1 at batch 128: 12 spans x 128 images, one chunk).
struct AlignedSplit {
  int64_t chunk, nchunks, spans, blocks;
};

AlignedSplit split_aligned(const LrnShape& sh) {
  const int64_t spans = (sh.hw + 31 + kAlignedSpan - 1) / kAlignedSpan, per_chunk = sh.n * spans;
  const Chunks ch = channel_chunks(sh.c, 2048 / (per_chunk > 0 ? per_chunk : 1));
  return AlignedSplit{ch.chunk, ch.count, spans, per_chunk * ch.count};
}

// Where a tensor starts in its line, in floats: flat index f begins a line when (f + a) % 32 == 0.
__device__ __forceinline__ int line_offset(const float* v) { return (int)(((uintptr_t)v / sizeof(float)) & 31); }

// The two elements thread t loads of the row whose pixel s0 - 31 is flat index `first`: the
// lines from the one holding `first` on (0 outside the tensor).
__device__ __forceinline__ void fetch_row(const float* __restrict__ v, int a, int64_t total, int64_t first,
                                          float (&r)[2]) {
  const int64_t start = first - ((first + a) & 31);  // & 31: the residue, also for first < 0
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int k = (int)threadIdx.x + h * kThreads;
    const int64_t f = start + k;
    r[h] = k < kAlignedLoads && f >= 0 && f < total ? __ldg(v + f) : 0.f;
  }
}

// Those elements into their frame row: element k of the loads is frame index k - shift + 1.
__device__ __forceinline__ void put_row(float* row, int a, int64_t first, const float (&r)[2]) {
  const int shift = (int)((first + a) & 31);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int j = (int)threadIdx.x + h * kThreads - shift + 1;
    if (j >= 0 && j < kFrame) row[j] = r[h];
  }
}

// Rows [lo, hi) of v (channels; rows outside [0, limit) skipped) into ring `rows` of R rows.
template <int R>
__device__ __forceinline__ void stage_rows(float (*rows)[kFrame], const float* __restrict__ v, int a, int64_t total,
                                           int64_t first0, int64_t hw, int lo, int hi, int limit) {
  for (int c = max(lo, 0); c < min(hi, limit); ++c) {
    float r[2];
    fetch_row(v, a, total, first0 + c * hw, r);
    put_row(rows[c % R], a, first0 + c * hw, r);
  }
}

// A step's U consecutive rows from channel c (those in [0, limit)), fetched into registers and
// then put into ring `rows` of R rows: every load of a step is issued before the first store.
template <int U>
struct StepRows {
  const float* __restrict__ v;
  int a, c, limit;
  float r[U][2];
  __device__ __forceinline__ bool has(int u) const { return c + u >= 0 && c + u < limit; }
  __device__ __forceinline__ void fetch(int64_t total, int64_t first0, int64_t hw) {
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (has(u)) fetch_row(v, a, total, first0 + (c + u) * hw, r[u]);
  }
  template <int R>
  __device__ __forceinline__ void put(float (*rows)[kFrame], int64_t first0, int64_t hw) const {
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (has(u)) put_row(rows[(c + u) % R], a, first0 + (c + u) * hw, r[u]);
  }
};

// Block b's place: image, channels [c0, c1), first pixel s0, and first0, the flat index of pixel
// s0 - 31 in channel 0 of its image.
struct AlignedPlace {
  int c0, c1;
  int64_t s0, first0;
};
__device__ __forceinline__ AlignedPlace aligned_place(const LrnShape& sh, const AlignedSplit& sp, int64_t b) {
  const int64_t span = b % sp.spans, rest = b / sp.spans, cb = rest % sp.nchunks, n = rest / sp.nchunks;
  const int64_t s0 = span * kAlignedSpan;
  return AlignedPlace{(int)(cb * sp.chunk), (int)min(sh.c, (cb + 1) * sp.chunk), s0, n * sh.c * sh.hw + s0 - 31};
}

template <int H, bool kThreeQuarters>
__global__ void __launch_bounds__(kThreads) lrn_aligned_kernel(const LrnShape sh, const AlignedSplit sp,
                                                                const float* __restrict__ x, float* __restrict__ y) {
  constexpr int U = kAlignedForward, R = 2 * H + U;  // rows [i0 - H, i0 + U + H) at a step
  __shared__ float xs[R][kFrame];
  const int64_t hw = sh.hw, total = sh.n * sh.c * hw;
  const int xa = line_offset(x), ya = line_offset(y), t = (int)threadIdx.x, c = (int)sh.c;
  for (int64_t b = blockIdx.x; b < sp.blocks; b += gridDim.x) {
    const AlignedPlace pl = aligned_place(sh, sp, b);
    const int limit = min(c, pl.c1 + H);
    stage_rows<R>(xs, x, xa, total, pl.first0, hw, pl.c0 - H, pl.c0 + H, limit);
    for (int i0 = pl.c0; i0 < pl.c1; i0 += U) {
      StepRows<U> xr{x, xa, i0 + H, limit};
      xr.fetch(total, pl.first0, hw);
      xr.template put<R>(xs, pl.first0, hw);
      __syncthreads();
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int i = i0 + u;
        const int64_t at = pl.first0 + 31 + i * hw;  // pixel s0 of row i
        const int d = (int)((at + ya) & 31);
        const int64_t p = pl.s0 - d + t;
        if (i >= pl.c1 || p < 0 || p >= hw) continue;
        const int j = 32 - d + t;
        float sum = 0.f;
#pragma unroll
        for (int m = -H; m <= H; ++m)
          if (i + m >= 0 && i + m < c) sum += xs[(i + m) % R][j] * xs[(i + m) % R][j];
        y[at - d + t] = xs[i % R][j] * neg_pow_fast<kThreeQuarters>(sh.k + sh.alpha * sum, -sh.beta);
      }
      __syncthreads();  // the next step overwrites the oldest rows
    }
  }
}

// The backward, as a pipeline of steps over the lead channels m0 .. m0 + U - 1 (from c0 - H):
// load x rows [m0 + H, m0 + U + H) and dy rows [m0, m0 + U); compute t_m = dy_m x_m p_m / s_m
// and q_m = dy_m p_m for those m (0 rows outside the channels are never read); then finish
// dx_i = q_i - 2 alpha beta x_i sum_{|m-i|<=H} t_m for i = m - H. Rings: x [m0 - H, m0 + U + H),
// t [m0 - 2H, m0 + U), q [m0 - H, m0 + U), dy the step's U rows.
template <int H, bool kThreeQuarters>
__global__ void __launch_bounds__(kThreads) lrn_backward_aligned_kernel(const LrnShape sh, const AlignedSplit sp,
                                                                         const float* __restrict__ x,
                                                                         const float* __restrict__ dy,
                                                                         float* __restrict__ dx) {
  constexpr int U = kAlignedBackward, RX = 2 * H + U, RT = 2 * H + U, RQ = H + U;
  __shared__ float xs[RX][kFrame], ts[RT][kFrame], qs[RQ][kFrame], ds[U][kFrame];
  const int64_t hw = sh.hw, total = sh.n * sh.c * hw;
  const int xa = line_offset(x), da = line_offset(dy), dxa = line_offset(dx), t = (int)threadIdx.x, c = (int)sh.c;
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  for (int64_t b = blockIdx.x; b < sp.blocks; b += gridDim.x) {
    const AlignedPlace pl = aligned_place(sh, sp, b);
    const int x_limit = min(c, pl.c1 + 2 * H), dy_limit = min(c, pl.c1 + H);
    stage_rows<RX>(xs, x, xa, total, pl.first0, hw, pl.c0 - 2 * H, pl.c0, x_limit);
    for (int m0 = pl.c0 - H; m0 < pl.c1 + H; m0 += U) {
      StepRows<U> xr{x, xa, m0 + H, x_limit}, dr{dy, da, m0, dy_limit};
      xr.fetch(total, pl.first0, hw);
      dr.fetch(total, pl.first0, hw);
      xr.template put<RX>(xs, pl.first0, hw);
      dr.template put<U>(ds, pl.first0, hw);
      __syncthreads();
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int m = m0 + u;
        if (m < 0 || m >= dy_limit) continue;
        for (int j = t + 1; j < kFrame; j += kThreads) {
          float sum = 0.f;
#pragma unroll
          for (int k = -H; k <= H; ++k)
            if (m + k >= 0 && m + k < c) sum += xs[(m + k) % RX][j] * xs[(m + k) % RX][j];
          const float s = sh.k + sh.alpha * sum, dym = ds[m % U][j];
          float p, p_over_s;
          if (kThreeQuarters) {  // as lrn_t_p
            const float r = rsqrtf(fminf(s, FLT_MAX)), inv_s = r * r;
            p = inv_s * rsqrtf(r);
            p_over_s = p * inv_s;
          } else {
            p = powf(s, -sh.beta);
            p_over_s = p / s;
          }
          ts[m % RT][j] = dym * xs[m % RX][j] * p_over_s;
          qs[m % RQ][j] = dym * p;
        }
      }
      __syncthreads();
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int i = m0 + u - H;
        const int64_t at = pl.first0 + 31 + i * hw;
        const int d = (int)((at + dxa) & 31);
        const int64_t p = pl.s0 - d + t;
        if (i < pl.c0 || i >= pl.c1 || p < 0 || p >= hw) continue;
        const int j = 32 - d + t;
        float tsum = 0.f;
#pragma unroll
        for (int k = -H; k <= H; ++k)
          if (i + k >= 0 && i + k < c) tsum += ts[(i + k) % RT][j];
        dx[at - d + t] = qs[i % RQ][j] - two_alpha_beta * xs[i % RX][j] * tsum;
      }
      __syncthreads();  // the next step overwrites the oldest rows
    }
  }
}

// ---- fallback for wide windows: one thread per element, direct sums over the window ----

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
                                  float* __restrict__ y) {
  const int64_t total = sh.n * sh.c * sh.hw;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t base, c;
    element(sh, e, base, c);
    y[e] = x[e] * powf(window_denominator(sh, x + base, c, half), -sh.beta);
  }
}

// t = dy x s^(-beta-1), into scratch
__global__ void lrn_backward_direct_t_kernel(const LrnShape sh, int64_t half, const float* __restrict__ x,
                                             const float* __restrict__ dy, float* __restrict__ t) {
  const int64_t total = sh.n * sh.c * sh.hw;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t base, c;
    element(sh, e, base, c);
    const float s = window_denominator(sh, x + base, c, half);
    t[e] = dy[e] * x[e] * powf(s, -sh.beta) / s;
  }
}

__global__ void lrn_backward_direct_dx_kernel(const LrnShape sh, int64_t half, const float* __restrict__ x,
                                              const float* __restrict__ dy, const float* __restrict__ t,
                                              float* __restrict__ dx) {
  const int64_t total = sh.n * sh.c * sh.hw;
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
    int64_t base, c;
    element(sh, e, base, c);
    const float s = window_denominator(sh, x + base, c, half);
    const int64_t lo = c - half < 0 ? 0 : c - half, hi = min(sh.c - 1, c + half);
    float tsum = 0.f;
    for (int64_t j = lo; j <= hi; ++j) tsum += t[base + j * sh.hw];
    dx[e] = dy[e] * powf(s, -sh.beta) - two_alpha_beta * x[e] * tsum;
  }
}

int64_t clipped_half(const LrnShape& sh) {
  const int64_t half = sh.size / 2;
  return half < sh.c - 1 ? half : sh.c - 1;  // a wider window sees the same channels
}

template <int H, bool kThreeQuarters>
void launch_forward(const LrnShape& sh, const Split& sp, const float* x, float* y) {
  lrn_ring_kernel<H, kThreeQuarters><<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, y);
  CUDA_CHECK_LAUNCH("lrn_ring_kernel");
}

template <int H, bool kThreeQuarters>
void launch_backward(const LrnShape& sh, const Split& sp, const float* x, const float* dy, float* dx) {
  lrn_backward_ring_kernel<H, kThreeQuarters>
      <<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, dy, dx);
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

template <int H, bool kThreeQuarters, int U>
void launch_block_forward(const LrnShape& sh, const Split& sp, const float* x, float* y) {
  lrn_block_kernel<H, kThreeQuarters, U><<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, y);
  CUDA_CHECK_LAUNCH("lrn_block_kernel");
}

template <int H, bool kThreeQuarters, bool kWide>
void launch_block_backward(const LrnShape& sh, const Split& sp, const float* x, const float* dy, float* dx) {
  lrn_backward_block_kernel<H, kThreeQuarters, kWide ? block_backward_wide(H) : block_backward(H)>
      <<<blocks_for(sp.total, kThreads), kThreads, 0, stream()>>>(sh, sp, x, dy, dx);
  CUDA_CHECK_LAUNCH("lrn_backward_block_kernel");
}

struct Forward {
  const LrnShape& sh; const Split& sp; const float* x; float* y;
  template <int H, bool B> void run() { launch_forward<H, B>(sh, sp, x, y); }
};
struct Backward {
  const LrnShape& sh; const Split& sp; const float* x; const float* dy; float* dx;
  template <int H, bool B> void run() { launch_backward<H, B>(sh, sp, x, dy, dx); }
};
template <int U>
struct BlockForward {
  const LrnShape& sh; const Split& sp; const float* x; float* y;
  template <int H, bool B> void run() { launch_block_forward<H, B, U>(sh, sp, x, y); }
};
template <int H, bool kThreeQuarters>
void launch_span_forward(const LrnShape& sh, const float* x, float* y) {
  const SpanSplit sp = split_spans(sh);
  lrn_span_kernel<H, kThreeQuarters><<<blocks_for(sp.blocks, 1), kThreads, 0, stream()>>>(sh, sp, x, y);
  CUDA_CHECK_LAUNCH("lrn_span_kernel");
}

struct SpanForward {
  const LrnShape& sh; const float* x; float* y;
  template <int H, bool B> void run() { launch_span_forward<H, B>(sh, x, y); }
};
template <int H, bool kThreeQuarters>
void launch_aligned(const LrnShape& sh, const float* x, float* y, const float* dy, float* dx) {
  const AlignedSplit sp = split_aligned(sh);
  if (y) {
    lrn_aligned_kernel<H, kThreeQuarters><<<blocks_for(sp.blocks, 1), kThreads, 0, stream()>>>(sh, sp, x, y);
    CUDA_CHECK_LAUNCH("lrn_aligned_kernel");
  } else {
    lrn_backward_aligned_kernel<H, kThreeQuarters>
        <<<blocks_for(sp.blocks, 1), kThreads, 0, stream()>>>(sh, sp, x, dy, dx);
    CUDA_CHECK_LAUNCH("lrn_backward_aligned_kernel");
  }
}

// Variant 6, either direction: y for the forward, else dy and dx.
struct Aligned {
  const LrnShape& sh; const float* x; float* y; const float* dy; float* dx;
  template <int H, bool B> void run() { launch_aligned<H, B>(sh, x, y, dy, dx); }
};
template <bool kWide>
struct BlockBackward {
  const LrnShape& sh; const Split& sp; const float* x; const float* dy; float* dx;
  template <int H, bool B> void run() { launch_block_backward<H, B, kWide>(sh, sp, x, dy, dx); }
};

}  // namespace

void lrn(const LrnShape& sh, const float* x, float* y) {
  const Split sp = split_channels(sh);
  // variants 0, 2 and 4: the ring forward (measured faster than the block forward on the H200);
  // 1: blocks of 8 channels, 3: blocks of 16, 5: spans of pixels, 6: line-aligned
  const int variant = lrn_variant();
  const bool ring = variant == 1   ? with_ring(sh, BlockForward<kBlockForward>{sh, sp, x, y})
                    : variant == 3 ? with_ring(sh, BlockForward<kBlockForwardWide>{sh, sp, x, y})
                    : variant == 5 ? with_ring(sh, SpanForward{sh, x, y})
                    : variant == 6 ? with_ring(sh, Aligned{sh, x, y, nullptr, nullptr})
                                   : with_ring(sh, Forward{sh, sp, x, y});
  if (ring) return;
  const int64_t total = sh.n * sh.c * sh.hw;
  lrn_direct_kernel<<<blocks_for(total, kThreads), kThreads, 0, stream()>>>(sh, clipped_half(sh), x, y);
  CUDA_CHECK_LAUNCH("lrn_direct_kernel");
}

void lrn_backward(const LrnShape& sh, const float* x, const float* dy, float* dx) {
  const Split sp = split_channels(sh);
  // variants 1, 2 and 5: the block backward (measured faster than the ring backward on the H200);
  // 3 and 4: its 16-channel blocks; 0: the ring backward; 6: line-aligned
  const int variant = lrn_variant();
  const bool ring = variant == 0                   ? with_ring(sh, Backward{sh, sp, x, dy, dx})
                    : variant == 6                 ? with_ring(sh, Aligned{sh, x, nullptr, dy, dx})
                    : variant == 3 || variant == 4 ? with_ring(sh, BlockBackward<true>{sh, sp, x, dy, dx})
                                                   : with_ring(sh, BlockBackward<false>{sh, sp, x, dy, dx});
  if (ring) return;
  const int64_t total = sh.n * sh.c * sh.hw, half = clipped_half(sh);
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const size_t bytes = (size_t)total * sizeof(float);
  float* t = static_cast<float*>(gpu::allocate(device, bytes));
  const unsigned blocks = blocks_for(total, kThreads);
  lrn_backward_direct_t_kernel<<<blocks, kThreads, 0, stream()>>>(sh, half, x, dy, t);
  cudaError_t launched = cudaGetLastError();
  if (launched == cudaSuccess) {
    lrn_backward_direct_dx_kernel<<<blocks, kThreads, 0, stream()>>>(sh, half, x, dy, t, dx);
    launched = cudaGetLastError();
  }
  gpu::deallocate(device, t, bytes);  // stream-ordered: reused only after these kernels
  CUDA_CHECK(launched);
}

}  // namespace convnet::cuda
