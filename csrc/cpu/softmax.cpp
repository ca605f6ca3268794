// CPU twins of the softmax family: OpenMP across rows, SIMD along a row.
#include "../kernels/softmax.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace convnet::cpu {
namespace {

// exp(x) for x <= 0, branch-free so the row loop vectorises (libm's expf does not without
// -ffast-math). x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by its degree-6
// Taylor polynomial (relative error < 2e-7), 2^n built in the exponent bits. Below -87.3 the
// true value is under float's normal range and we return 0.
inline float exp_nonpositive(float x) {
  const float xc = x < -87.3f ? -87.3f : x;
  const float shifter = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (xc * 1.44269504f + shifter) - shifter;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = ((int32_t)n + 127) << 23;  // n in [-126, 0]: a normal power of two
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x < -87.3f ? 0.f : p * scale;
}

}  // namespace

void softmax_cross_entropy(const float* logits, const int32_t* labels, float* probs, int64_t n,
                           int64_t k, SoftmaxFindings* found) {
  std::vector<double> row_loss(n);
  std::vector<int64_t> row_nonfinite(n);
#pragma omp parallel for schedule(static) if (n * k > 16384)
  for (int64_t r = 0; r < n; ++r) {
    const float* x = logits + r * k;
    float* p = probs + r * k;
    float m = x[0];
    int64_t bad = 0;
    // x - x is 0 for a finite x and NaN otherwise (a test that vectorises, unlike isfinite).
#pragma omp simd reduction(max : m) reduction(+ : bad)
    for (int64_t j = 0; j < k; ++j) {
      m = x[j] > m ? x[j] : m;
      bad += !(x[j] - x[j] == 0.f);
    }
    row_nonfinite[r] = bad;
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < k; ++j) {
      float e = exp_nonpositive(x[j] - m);
      p[j] = e;
      s += e;
    }
    const float inv = 1.f / s;
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) p[j] *= inv;
    // -log softmax[label] = logsumexp - x[label] = log(s) - (x[label] - m); s >= 1, so no
    // underflow however far below the max the label's logit is. A bad label reads nothing.
    const int32_t label = labels[r];
    row_loss[r] = label >= 0 && label < k ? std::log((double)s) - ((double)x[label] - (double)m) : 0.0;
  }
  // Serial, in row order: the same for any thread count.
  *found = {0.0, 0, -1, 0};
  double total = 0.0;
  for (int64_t r = 0; r < n; ++r) {
    total += row_loss[r];
    found->nonfinite += row_nonfinite[r];
    if (found->bad_row < 0 && (labels[r] < 0 || labels[r] >= k)) found->bad_row = r, found->bad_label = labels[r];
  }
  found->mean_loss = total / (double)n;
}

void softmax_cross_entropy_backward(const float* probs, const int32_t* labels, float* dlogits,
                                    int64_t n, int64_t k) {
  const float fn = (float)n;
#pragma omp parallel for schedule(static) if (n * k > 65536)
  for (int64_t r = 0; r < n; ++r) {
    const float* p = probs + r * k;
    float* d = dlogits + r * k;
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) d[j] = p[j] / fn;
    d[labels[r]] = (p[labels[r]] - 1.f) / fn;
  }
}

}  // namespace convnet::cpu
