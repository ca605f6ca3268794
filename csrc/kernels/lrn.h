// Twin kernels of the local response normalisation family (csrc/cpu/lrn.cpp, csrc/cuda/lrn.cu).
// Dense NCHW float32 viewed as (n, c, hw). The paper's cross-channel form, alpha not divided by size:
//   s_i = k + alpha * sum_{j=max(0,i-size/2)}^{min(c-1,i+size/2)} x_j^2,   y_i = x_i * s_i^-beta.
// Kernels trust their arguments: csrc/ops/lrn.cpp has checked them (size odd >= 1; k a normal
// float; beta >= 0; alpha / k at most 2^-24 / FLT_MIN; k^-beta and k^(-beta-1) within a double's
// range).
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define CONVNET_LRN_HD __host__ __device__ __forceinline__
#else
#define CONVNET_LRN_HD inline
#endif

namespace convnet {
struct LrnShape {
  int64_t n, c, hw;  // batch, channels, height * width
  int64_t size;      // window length across channels (odd)
  float alpha, beta, k;
};
// The CUDA kernels used for size <= 9 (csrc/cuda/lrn.cu): 0 the per-channel ring kernels, 1 the
// channel-block kernels, 2 (default) the ring forward and the channel-block backward.
// CONVNET_LRN_VARIANT read once from the environment, or set_lrn_variant (tests). The CPU twins
// ignore it.
int lrn_variant();
void set_lrn_variant(int variant);

// Out of float32's range. Both twins compute in float32, then redo in double (below) what left
// float's range: a sum of squares past 3.4e38 (activations of ~1e19), or p = s^-beta, or the
// backward's s^(-beta-1), outside the normal floats (overflowing for a tiny k, flushing to 0 for a
// huge s). Clamping s instead kept outputs finite but wrong: they grew with x instead of
// shrinking, and the gradient changed sign. The CUDA twin marks such an element by making p NaN
// (lrn_checked, csrc/cuda/lrn.cu), so its result is not finite, and a one-block pass after the
// kernels redoes every result that is not finite (it returns at once unless a kernel raised its
// flag). The CPU twin checks each task's inputs against bounds under which its float path stays in
// range, and computes a task past them in double, all of it. A result out of float's range in
// truth, or from a NaN input, comes out inf or NaN again. Never taken with ReLU-sized inputs and
// the paper's constants (it needs activations of ~1e12 and up).
// Under float's range too: the backward's t = dy x s^(-beta-1), and 2 alpha beta x, are scaled back
// up by 2 alpha beta x_i, so a step of them under the normal floats (not exactly 0) loses digits
// that matter (alpha = 1e30, x = 1e-15, dy = 1e-30: the gradient 4x off). The CUDA twin marks such
// a t (lrn_t); the CPU twin sends a task whose smallest nonzero |x| and |dy| could make one to
// double (SafeInputs::keeps_digits).

// Channel i's window [lo, hi], clipped to the channels.
CONVNET_LRN_HD void lrn_window(const LrnShape& sh, int64_t i, int64_t& lo, int64_t& hi) {
  const int64_t half = sh.size / 2;
  lo = i > half ? i - half : 0;
  hi = sh.c - 1 - i > half ? i + half : sh.c - 1;
}

// s_i in double; xp: channel 0 of one pixel (channels hw apart).
CONVNET_LRN_HD double lrn_s_exact(const LrnShape& sh, const float* xp, int64_t i) {
  int64_t lo, hi;
  lrn_window(sh, i, lo, hi);
  double sum = 0;
  for (int64_t j = lo; j <= hi; ++j) {
    const double v = xp[j * sh.hw];
    sum += v * v;
  }
  return (double)sh.k + (double)sh.alpha * sum;
}

// y_i in double, rounded once to float.
CONVNET_LRN_HD float lrn_y_exact(const LrnShape& sh, const float* xp, int64_t i) {
  return (float)(xp[i * sh.hw] * pow(lrn_s_exact(sh, xp, i), -(double)sh.beta));
}

// dx_i in double (see CONVNET_LRN_TWINS below for the formula); dyp as xp.
CONVNET_LRN_HD float lrn_dx_exact(const LrnShape& sh, const float* xp, const float* dyp, int64_t i) {
  const int64_t hw = sh.hw;
  int64_t lo, hi;
  lrn_window(sh, i, lo, hi);
  const double neg_beta = -(double)sh.beta;
  double tsum = 0;
  for (int64_t m = lo; m <= hi; ++m) {
    const double s = lrn_s_exact(sh, xp, m);
    tsum += (double)dyp[m * hw] * xp[m * hw] * (pow(s, neg_beta) / s);
  }
  return (float)(dyp[i * hw] * pow(lrn_s_exact(sh, xp, i), neg_beta) -
                 2.0 * sh.alpha * sh.beta * xp[i * hw] * tsum);
}
}  // namespace convnet

#define CONVNET_LRN_TWINS                                                                   \
  void lrn(const LrnShape& sh, const float* x, float* y);                                   \
  /* dx = dy_i s_i^-beta - 2 alpha beta x_i sum_{j: i in window(j)} dy_j x_j s_j^(-beta-1); \
     s is recomputed from x, so y is not read (the entry point checks its shape) */          \
  void lrn_backward(const LrnShape& sh, const float* x, const float* dy, float* dx);

namespace convnet::cpu { CONVNET_LRN_TWINS }
namespace convnet::cuda { CONVNET_LRN_TWINS }
#undef CONVNET_LRN_TWINS
