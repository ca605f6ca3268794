// CPU twins of the elementwise family: one pass each, OpenMP across cores.
#include "../kernels/elementwise.h"

namespace convnet::cpu {

void relu(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
}

// Gradient gated on the output: y > 0 exactly where x > 0.
void relu_backward(const float* y, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}

}  // namespace convnet::cpu
