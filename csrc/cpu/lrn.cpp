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

// s^-beta, s >= k (a normal float: checked; out-of-range s never gets here, see SafeInputs). The
// paper's beta = 3/4 as r sqrt(r) with r = 1/sqrt(s); other betas through powf (not vectorised).
struct PowThreeQuarters {
  float operator()(float s) const {
    float r = rsqrt_newton(s);
    return r * r * rsqrt_newton(r);
  }
};
struct PowGeneral {
  float neg_beta;
  float operator()(float s) const { return std::pow(s, neg_beta); }
};

// |v| over a task's rows (n rows of len, hw apart): the largest, the smallest nonzero (inf when all
// are 0), and whether one is NaN.
struct Extent {
  float largest, smallest;
  bool nan;
};

inline Extent extent(const float* v, int64_t n, int64_t hw, int64_t len) {
  float hi = 0.f, lo = INFINITY;
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* r = v + i * hw;
#pragma omp simd reduction(max : hi) reduction(min : lo) reduction(| : bad)
    for (int64_t p = 0; p < len; ++p) {
      const float a = std::fabs(r[p]);
      hi = a > hi ? a : hi;
      lo = a < lo && a != 0.f ? a : lo;
      bad |= a != a;
    }
  }
  return {hi, lo, bad != 0};
}

// Out of float's range (csrc/kernels/lrn.h). A task (an image's block of pixels) whose inputs are
// all within SafeInputs' bounds runs the float loops below as they are: every s lies where s^-beta
// (and, for the backward, s^(-beta-1)) is a normal float, and no intermediate overflows. Any
// other task (an input past a bound, or NaN) is computed in double, all of it. The bounds are
// checked in a pass over the task's inputs before its loops, which also brings them into cache:
// benchmarks/run.py --device cpu --only lrn (batch 16, 2 cores, builds alternated) read forward
// conv1 1.8 ms against 2.3-2.7 without any check, conv2 0.9-1.1 against 0.9-1.1, backward conv1
// 3.0-3.3 against 3.5-3.9, conv2 2.0 against 1.7-1.9. Checks inside the loops cost 15-40%
// (per-pixel arrays, reductions), and NaN markers there, the CUDA twin's way, left GCC's loops
// scalar (2.2x slower). The backward's pass also finds the smallest nonzero |x| and |dy|
// (keeps_digits), at no cost seen: conv1 4.33-4.36 ms against 4.27-4.32 without, conv2 2.67-2.80
// against 2.81-2.83 (the same run of the session, builds alternated).
struct SafeInputs {
  float x, dy;  // bounds on |x| and |dy|; 0 when no input is safe (k itself out of range)
  const LrnShape& sh;
  const double width;  // squares in a window
  SafeInputs(const LrnShape& shape, bool backward)
      : x(0.f), dy(0.f), sh(shape), width((double)std::min<int64_t>(shape.size, shape.c)) {
    // the s whose s^-e is a normal float, e = beta (and beta + 1 for the backward), narrowed by 1e-4
    const double min_log = std::log((double)FLT_MIN), max_log = std::log((double)FLT_MAX);
    double lo_log = -INFINITY, hi_log = INFINITY;
    for (double e : {(double)sh.beta, sh.beta + 1.0}) {
      if (e > 0) {
        lo_log = std::max(lo_log, -max_log / e);
        hi_log = std::min(hi_log, -min_log / e);
      }
      if (!backward) break;
    }
    const double lo = std::exp(lo_log) * 1.0001, hi = std::min(std::exp(hi_log) * 0.9999, (double)FLT_MAX);
    const double k = sh.k;
    if (!(k >= lo && k < hi)) return;
    // the window's sum of squares (at most width of them, summed in float before alpha) finite,
    // and s = k + alpha * that sum <= hi, with room for rounding
    double xs = std::sqrt(0.99 * FLT_MAX / width);
    if (sh.alpha > 0) xs = std::min(xs, std::sqrt(0.99 * (hi - k) / (sh.alpha * width)));
    x = (float)xs;
    if (!backward) return;
    // t = dy x s^(-beta-1) <= dy x k^(-beta-1); its window sum, times 2 alpha beta x, and dy s^-beta
    // (each step of each product) at most FLT_MAX / 4
    const double p_max = std::pow(k, -(double)sh.beta), t_per = (double)x * std::pow(k, -(double)sh.beta - 1.0);
    const double per_dy = std::max({(double)x, (double)x * p_max, p_max, width * t_per,
                                    2.0 * sh.alpha * sh.beta * x * width * t_per});
    dy = (float)std::min((double)FLT_MAX / 4 / per_dy, (double)FLT_MAX);
  }

  // Whether a backward task within the bounds keeps its digits: the steps of t = dy x s^-beta / s,
  // and 2 alpha beta x, normal floats or exactly 0, for every s up to k + alpha * width * (largest
  // x)^2. Under float's normal range they lose digits that 2 alpha beta x_i may scale back up (a t
  // of 3e-46 flushed to 0 gave a gradient 4x off with alpha = 1e30).
  bool keeps_digits(const Extent& ex, const Extent& ed) const {
    if (ex.smallest == INFINITY || ed.smallest == INFINITY) return true;  // every t exactly 0
    const double s_max = sh.k + sh.alpha * width * (double)ex.largest * ex.largest;
    const double shrink = s_max > 1.0 ? std::pow(s_max, -(double)sh.beta - 1.0) : 1.0;
    const double two_alpha_beta = 2.0 * sh.alpha * sh.beta;
    return (double)ed.smallest * ex.smallest * shrink >= 2.0 * FLT_MIN &&
           (two_alpha_beta == 0.0 || two_alpha_beta * ex.smallest >= 2.0 * FLT_MIN);
  }
};

// Whether |v| <= bound for the len values of each of n rows (hw apart); false for NaN. One compare
// joined with |: GCC vectorises this form only.
inline bool within(const float* v, int64_t n, int64_t hw, int64_t len, float bound) {
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* r = v + i * hw;
#pragma omp simd reduction(| : bad)
    for (int64_t p = 0; p < len; ++p) bad |= !(std::fabs(r[p]) <= bound);
  }
  return bad == 0;
}

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
  const SafeInputs safe(sh, false);
#pragma omp parallel for schedule(static) if (sh.n * C * HW > 65536)
  for (int64_t task = 0; task < sh.n * nb; ++task) {
    const int64_t n = task / nb, p0 = (task % nb) * kBlock, len = std::min(kBlock, HW - p0);
    const float* xb = x + n * C * HW + p0;
    float* yb = y + n * C * HW + p0;
    if (!within(xb, C, HW, len, safe.x)) {
      for (int64_t i = 0; i < C; ++i)
        for (int64_t p = 0; p < len; ++p) yb[i * HW + p] = lrn_y_exact(sh, xb + p, i);
      continue;
    }
    alignas(64) float s[kBlock];
    for (int64_t i = 0; i < C; ++i) {
      window_denominator(sh, xb, std::max<int64_t>(0, i - half), std::min(C - 1, i + half), len, s);
      const float* xi = xb + i * HW;
      float* yi = yb + i * HW;
#pragma omp simd
      for (int64_t p = 0; p < len; ++p) yi[p] = xi[p] * neg_pow(s[p]);
    }
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
  const SafeInputs safe(sh, true);
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
      const Extent ex = extent(xb, C, HW, len), ed = extent(dyb, C, HW, len);
      if (ex.nan || ed.nan || !(ex.largest <= safe.x) || !(ed.largest <= safe.dy) || !safe.keeps_digits(ex, ed)) {
        for (int64_t i = 0; i < C; ++i)
          for (int64_t p = 0; p < len; ++p) dxb[i * HW + p] = lrn_dx_exact(sh, xb + p, dyb + p, i);
        continue;
      }
      for (int64_t j = 0; j < C + half; ++j) {
        if (j < C) {
          window_denominator(sh, xb, std::max<int64_t>(0, j - half), std::min(C - 1, j + half), len, s);
          const float* xj = xb + j * HW;
          const float* dyj = dyb + j * HW;
          float* pj = p_ring.data() + (j % ring) * kBlock;
          float* tj = t_ring.data() + (j % ring) * kBlock;
#pragma omp simd
          for (int64_t p = 0; p < len; ++p) {
            float q = neg_pow(s[p]);
            pj[p] = q;
            tj[p] = dyj[p] * xj[p] * q / s[p];
          }
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
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) dxi[p] = dyi[p] * pi[p] - two_alpha_beta * xi[p] * s[p];
      }
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
