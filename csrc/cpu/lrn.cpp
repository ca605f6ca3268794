// CPU twins of the local response normalisation family.
// Work is split into tasks of (image, block of kBlock pixels); a task walks the channels,
// and every inner loop runs over the block's contiguous pixels (vectorised). Window sums
// are recomputed directly (size multiply-adds from rows still in L1) rather than slid by
// add-and-subtract, so no cancellation error creeps in along the channels.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../kernels/lrn.h"

namespace convnet::cpu {
namespace {

constexpr int64_t kBlock = 128;  // pixels per task: rows of 512 B, a window of them stays in L1


// 1/sqrt(v) for normal v > 0 in plain arithmetic: the bit-level first guess (3.4% off), then
// three Newton steps (to float rounding). Unlike sqrtf, which GCC must guard with an errno
// branch unless built with -fno-math-errno, this vectorises.
inline float rsqrt_newton(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = 0x5f375a86u - (bits >> 1);
  float r;
  std::memcpy(&r, &bits, sizeof r);
  for (int step = 0; step < 3; ++step) r = r * (1.5f - 0.5f * v * r * r);
  return r;
}

// s^-beta, s >= k (a normal float: checked). The paper's beta = 3/4 as r sqrt(r) with
// r = 1/sqrt(s) (s capped at FLT_MAX so an overflowed x^2 gives no NaN here: that element is
// redone, see NormalRange); other betas through powf (not vectorised).
struct PowThreeQuarters {
  float operator()(float s) const {
    float r = rsqrt_newton(std::min(s, FLT_MAX));
    return r * r * rsqrt_newton(r);
  }
};
struct PowGeneral {
  float neg_beta;
  float operator()(float s) const { return std::pow(s, neg_beta); }
};

// Out of float's range (csrc/kernels/lrn.h): the s for which s, s^-beta and, for the backward,
// s^(-beta-1) are normal floats, narrowed by 1e-4 for powf's rounding. A task (an image's block
// of pixels) with an s outside it, or with a result that is not finite, is redone in double, all of
// it. The watch (below) rides in the vectorised loops: NaN markers inside them (the CUDA twin's
// way) left GCC's loops scalar, 2.2x slower. Its cost (benchmarks/run.py --device cpu --only lrn,
// batch 16 on the 2 cores, builds alternated three times): forward conv1 2.1-2.4 -> 2.5-2.7 ms,
// conv2 0.9-1.0 -> 1.2-1.6; backward conv1 3.2-3.6 -> 3.9-4.4, conv2 1.8 -> 2.3-2.6.
struct NormalRange {
  float lo, hi;
  NormalRange(double beta, bool backward) : lo(0.f), hi(FLT_MAX) {
    const double min_log = std::log((double)FLT_MIN), max_log = std::log((double)FLT_MAX);
    double lo_log = -INFINITY, hi_log = INFINITY;  // of s
    for (double e : {beta, beta + 1.0}) {  // s^-e must lie in [FLT_MIN, FLT_MAX] (beta >= 0, checked)
      if (e > 0) {
        lo_log = std::max(lo_log, -max_log / e);
        hi_log = std::min(hi_log, -min_log / e);
      }
      if (!backward) break;
    }
    lo = (float)std::min(std::exp(lo_log) * 1.0001, (double)FLT_MAX);
    hi = (float)std::min(std::exp(hi_log) * 0.9999, (double)FLT_MAX);
  }
};

// Over a task: the least and greatest s seen, and the sum of 0 * every result (NaN once a result
// was not finite). Each loop adds its row through OpenMP reductions (registers, one horizontal
// step a row): per-pixel arrays cost the backward 40% in loads and stores, separate checking
// loops 20%.
struct Watch {
  float lo = INFINITY, hi = 0.f, nan = 0.f;
  bool out_of(const NormalRange& r) const { return !(lo >= r.lo) || !(hi <= r.hi) || !(nan == 0.f); }
};

// s[p] = k + alpha * sum_{j=lo..hi} x[j*hw + p]^2 for p < len, channels in ascending order.
inline void window_denominator(const LrnShape& sh, const float* x, int64_t lo, int64_t hi, int64_t len, float* s) {
  const int64_t hw = sh.hw;
#pragma omp simd
  for (int64_t p = 0; p < len; ++p) s[p] = 0.f;
  for (int64_t j = lo; j <= hi; ++j) {
    const float* r = x + j * hw;
#pragma omp simd
    for (int64_t p = 0; p < len; ++p) s[p] += r[p] * r[p];
  }
#pragma omp simd
  for (int64_t p = 0; p < len; ++p) s[p] = sh.k + sh.alpha * s[p];
}

int64_t blocks_of(int64_t hw) { return (hw + kBlock - 1) / kBlock; }

template <class NegPow>
void lrn_forward(const LrnShape& sh, const float* x, float* y, NegPow neg_pow) {
  const int64_t C = sh.c, HW = sh.hw, half = sh.size / 2, nb = blocks_of(HW);
  const NormalRange range(sh.beta, false);
#pragma omp parallel for schedule(static) if (sh.n * C * HW > 65536)
  for (int64_t task = 0; task < sh.n * nb; ++task) {
    const int64_t n = task / nb, p0 = (task % nb) * kBlock, len = std::min(kBlock, HW - p0);
    const float* xb = x + n * C * HW + p0;
    float* yb = y + n * C * HW + p0;
    alignas(64) float s[kBlock];
    Watch w;
    for (int64_t i = 0; i < C; ++i) {
      window_denominator(sh, xb, std::max<int64_t>(0, i - half), std::min(C - 1, i + half), len, s);
      const float* xi = xb + i * HW;
      float* yi = yb + i * HW;
      float lo = w.lo, hi = w.hi, nan = w.nan;
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(+ : nan)
      for (int64_t p = 0; p < len; ++p) {
        const float v = xi[p] * neg_pow(s[p]);
        yi[p] = v;
        lo = std::min(lo, s[p]);
        hi = std::max(hi, s[p]);
        nan += 0.f * v;
      }
      w = Watch{lo, hi, nan};
    }
    if (w.out_of(range))
      for (int64_t i = 0; i < C; ++i)
        for (int64_t p = 0; p < len; ++p) yb[i * HW + p] = lrn_y_exact(sh, xb + p, i);
  }
}

// One pass over the channels with a lag of `half`: step j computes p_j = s_j^-beta and
// t_j = dy_j x_j s_j^(-beta-1) into rings of 2*half+1 rows, then finishes channel
// i = j - half, whose window's t are all known by then.
template <class NegPow>
void lrn_backward_impl(const LrnShape& sh, const float* x, const float* dy, float* dx, NegPow neg_pow) {
  const int64_t C = sh.c, HW = sh.hw, nb = blocks_of(HW);
  const int64_t half = std::min(sh.size / 2, C - 1);  // a wider window sees the same channels
  const int64_t ring = 2 * half + 1;
  const float two_alpha_beta = 2.f * sh.alpha * sh.beta;
  const NormalRange range(sh.beta, true);
#pragma omp parallel if (sh.n * C * HW > 65536)
  {
    std::vector<float> t_ring(ring * kBlock), p_ring(ring * kBlock);
    alignas(64) float s[kBlock];
#pragma omp for schedule(static)
    for (int64_t task = 0; task < sh.n * nb; ++task) {
      const int64_t n = task / nb, p0 = (task % nb) * kBlock, len = std::min(kBlock, HW - p0);
      const float* xb = x + n * C * HW + p0;
      const float* dyb = dy + n * C * HW + p0;
      float* dxb = dx + n * C * HW + p0;
      Watch w;
      for (int64_t j = 0; j < C + half; ++j) {
        if (j < C) {
          window_denominator(sh, xb, std::max<int64_t>(0, j - half), std::min(C - 1, j + half), len, s);
          const float* xj = xb + j * HW;
          const float* dyj = dyb + j * HW;
          float* pj = p_ring.data() + (j % ring) * kBlock;
          float* tj = t_ring.data() + (j % ring) * kBlock;
          float lo = w.lo, hi = w.hi;
#pragma omp simd reduction(min : lo) reduction(max : hi)
          for (int64_t p = 0; p < len; ++p) {
            float q = neg_pow(s[p]);
            pj[p] = q;
            tj[p] = dyj[p] * xj[p] * q / s[p];
            lo = std::min(lo, s[p]);
            hi = std::max(hi, s[p]);
          }
          w.lo = lo;
          w.hi = hi;
        }
        const int64_t i = j - half;
        if (i < 0) continue;
        // s doubles as the accumulator of sum_{m in window(i)} t_m, in ascending m
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) s[p] = 0.f;
        for (int64_t m = std::max<int64_t>(0, i - half); m <= std::min(C - 1, i + half); ++m) {
          const float* tm = t_ring.data() + (m % ring) * kBlock;
#pragma omp simd
          for (int64_t p = 0; p < len; ++p) s[p] += tm[p];
        }
        const float* xi = xb + i * HW;
        const float* dyi = dyb + i * HW;
        const float* pi = p_ring.data() + (i % ring) * kBlock;
        float* dxi = dxb + i * HW;
        float nan = w.nan;
#pragma omp simd reduction(+ : nan)
        for (int64_t p = 0; p < len; ++p) {
          const float v = dyi[p] * pi[p] - two_alpha_beta * xi[p] * s[p];
          dxi[p] = v;
          nan += 0.f * v;
        }
        w.nan = nan;
      }
      if (w.out_of(range))
        for (int64_t i = 0; i < C; ++i)
          for (int64_t p = 0; p < len; ++p) dxb[i * HW + p] = lrn_dx_exact(sh, xb + p, dyb + p, i);
    }
  }
}

}  // namespace

void lrn(const LrnShape& sh, const float* x, float* y) {
  if (sh.beta == 0.75f)
    lrn_forward(sh, x, y, PowThreeQuarters{});
  else
    lrn_forward(sh, x, y, PowGeneral{-sh.beta});
}

void lrn_backward(const LrnShape& sh, const float* x, const float* dy, float* dx) {
  if (sh.beta == 0.75f)
    lrn_backward_impl(sh, x, dy, dx, PowThreeQuarters{});
  else
    lrn_backward_impl(sh, x, dy, dx, PowGeneral{-sh.beta});
}

}  // namespace convnet::cpu
