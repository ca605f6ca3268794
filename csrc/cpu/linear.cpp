// CPU twins of the fully-connected family, three GEMMs on row-major x (n, in), w (out, in):
//   y = x w^T (+ b),  dx = dy w,  dw = dy^T x,  db = column sums of dy.
#include <algorithm>

#include "../kernels/linear.h"
#include "gemm.h"

namespace convnet::cpu {

void linear(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* b, float* y) {
  if (b) {  // start from the bias and accumulate the product onto it
    for (int64_t i = 0; i < n; ++i) std::copy(b, b + out, y + i * out);
  }
  gemm(false, true, n, out, in, x, in, w, in, y, out, b != nullptr);
}

void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, float* db) {
  if (dx) gemm(false, false, n, in, out, dy, out, w, in, dx, in, false);
  gemm(true, false, out, in, n, dy, out, x, in, dw, in, false);
  if (!db) return;
  // Row after row of dy (batch order), vectorised across the columns.
  std::fill(db, db + out, 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const float* d = dy + i * out;
#pragma omp simd
    for (int64_t j = 0; j < out; ++j) db[j] += d[j];
  }
}

}  // namespace convnet::cpu
