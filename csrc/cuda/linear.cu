// CUDA twins of the fully-connected family, on the GEMM core of gemm.cuh (one batch, z = 0).
//   forward   y  = x w^T   M = n,   N = out, K = in   A = x rows,   B = w rows (both contiguous in k)
//   dx        dx = dy w    M = n,   N = in,  K = out  A = dy rows,  B = w read along its rows (n-fast)
//   dw        dw = dy^T x  M = out, N = in,  K = n    A = dy columns (m-fast), B = x (n-fast)
//   db        column sums of dy: channel_sum (fixed order).
// With batch 128 the output grids are small (fc8 forward: 1 x 8 big tiles), so run_gemm splits K
// and reduces the partials deterministically. ptxas report: see csrc/cuda/conv.cu.
#include "../kernels/conv.h"  // conv_variant()
#include "../kernels/linear.h"
#include "linear_gemm.cuh"

namespace convnet::cuda {
using linear_gemm::AlongColumns;
using linear_gemm::AlongRows;
using linear_gemm::RowMajorOutput;

void linear(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* b, float* y) {
  run_gemm<true, true>(1, n, out, in, AlongRows{x, in}, AlongRows{w, in}, RowMajorOutput{y, out, b},
                       "linear forward", conv_variant());
}

void linear_backward(int64_t n, int64_t in, int64_t out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, float* db) {
  if (dx)
    run_gemm<true, false>(1, n, in, out, AlongRows{dy, out}, AlongColumns{w, in},
                          RowMajorOutput{dx, in, nullptr}, "linear backward dx", conv_variant());
  run_gemm<false, false>(1, out, in, n, AlongColumns{dy, out}, AlongColumns{x, in},
                         RowMajorOutput{dw, in, nullptr}, "linear backward dw", conv_variant());
  if (db) channel_sum(dy, n, out, 1, db);
}

}  // namespace convnet::cuda
