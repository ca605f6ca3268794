// CUDA twins of the fully-connected family, on the GEMM core of gemm.cuh (one batch, z = 0).
//   forward   y  = x w^T   M = n,   N = out, K = in   A = x rows,   B = w rows (both contiguous in k)
//   dx        dx = dy w    M = n,   N = in,  K = out  A = dy rows,  B = w read along its rows (n-fast)
//   dw        dw = dy^T x  M = out, N = in,  K = n    A = dy columns (m-fast), B = x (n-fast)
//   db        column sums of dy: channel_sum (fixed order).
// With batch 128 the output grids are small (fc8 forward: 1 x 8 big tiles), so run_gemm splits K
// and reduces the partials deterministically. ptxas report: see csrc/cuda/conv.cu.
#include "../kernels/linear.h"
#include "gemm.cuh"

namespace convnet::cuda {
namespace {

// Element (mn, k) = p[mn * ld + k]: a row-major matrix read along its rows.
struct AlongRows {
  const float* p;
  int64_t ld;
  struct Col {
    bool ok;
    const float* row;
  };
  __device__ Col col(int, int mn) const {
    if (mn < 0) return {false, p};
    return {true, p + mn * ld};
  }
  __device__ float at(const Col& c, int k) const { return __ldg(c.row + k); }
};

// Element (mn, k) = p[k * ld + mn]: a row-major matrix read along its columns.
struct AlongColumns {
  const float* p;
  int64_t ld;
  struct Col {
    bool ok;
    const float* column;
  };
  __device__ Col col(int, int mn) const {
    if (mn < 0) return {false, p};
    return {true, p + mn};
  }
  __device__ float at(const Col& c, int k) const { return __ldg(c.column + k * ld); }
};

// C(m, n) -> out[m * ld + n] (+ bias[n]).
struct RowMajorOutput {
  float* out;
  int64_t ld;
  const float* bias;
  __device__ void operator()(int, int m, int n, float v) const {
    out[m * ld + n] = bias ? v + bias[n] : v;
  }
};

}  // namespace

void linear(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* b, float* y) {
  run_gemm<true, true>(1, n, out, in, AlongRows{x, in}, AlongRows{w, in}, RowMajorOutput{y, out, b},
                       "linear forward");
}

void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, float* db) {
  if (dx)
    run_gemm<true, false>(1, n, in, out, AlongRows{dy, out}, AlongColumns{w, in},
                          RowMajorOutput{dx, in, nullptr}, "linear backward dx");
  run_gemm<false, false>(1, out, in, n, AlongColumns{dy, out}, AlongColumns{x, in},
                         RowMajorOutput{dw, in, nullptr}, "linear backward dw");
  if (db) channel_sum(dy, n, out, 1, db);
}

}  // namespace convnet::cuda
