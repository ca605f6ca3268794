// CPU twins of the elementwise family: one pass each, OpenMP across cores.
// The `if` clause names `parallel`: a bare `if` on `parallel for simd` also applies to the simd
// part (OpenMP 5), so below the threshold the loop would run unvectorised (~9x slower).
#include "../kernels/elementwise.h"

#include "../kernels/random.h"

namespace convnet::cpu {

// From this many elements the loops split across the cores (PyTorch's grain, 32768): fc6's 16 x 4096
// on one core took 8 us against PyTorch's 6.5-7 on two (the 2-core development machine).
constexpr int64_t kParallelFrom = 32768;

void relu(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= kParallelFrom)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] < 0.f ? 0.f : x[i];  // NaN passes through (as in PyTorch), so bad weights stay visible
}

// Gradient gated on the output: y > 0 exactly where x > 0.
void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for simd schedule(static) if (parallel : n >= kParallelFrom)
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

// Each element's draw depends only on (seed, i), so the static split across threads does
// not change the mask. The 64-bit hash vectorises (AVX-512DQ has a 64-bit multiply).
void dropout(const float* x, float* y, uint8_t* mask, int64_t n, double p, uint64_t seed) {
  const uint64_t key = random::stream_key(seed);
  const uint32_t threshold = random::drop_threshold(p);
  const float scale = (float)(1.0 / (1.0 - p));
#pragma omp parallel for simd schedule(static) if (parallel : n >= kParallelFrom)
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = random::uniform24(key, (uint64_t)i) >= threshold;
    mask[i] = keep ? 1 : 0;
    y[i] = x[i] * (keep ? scale : 0.f);  // x * mask / (1 - p), NaN-propagating like the formula
  }
}

void dropout_backward(const float* dy, const uint8_t* mask, float* dx, int64_t n, double p) {
  const float scale = (float)(1.0 / (1.0 - p));
#pragma omp parallel for simd schedule(static) if (parallel : n >= kParallelFrom)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * ((float)mask[i] * scale);
}

void sgd_update(float* w, const float* dw, float* v, int64_t n, float lr, float momentum,
                float weight_decay) {
  const float decay = weight_decay * lr;
#pragma omp parallel for simd schedule(static) if (parallel : n >= kParallelFrom)
  for (int64_t i = 0; i < n; ++i) {
    float vi = momentum * v[i] - decay * w[i] - lr * dw[i];
    v[i] = vi;
    w[i] += vi;
  }
}

}  // namespace convnet::cpu
