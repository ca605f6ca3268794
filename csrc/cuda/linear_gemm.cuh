// The index maps of the fully-connected GEMMs (see csrc/cuda/linear.cu); host-and-device code so
// that tools/emulate_gemm.cu can check them on the CPU.
#pragma once
#include "dense_operands.cuh"

namespace convnet::cuda::linear_gemm {

// Element (mn, k) = p[mn * ld + k]: a row-major matrix read along its rows.
struct AlongRows : MatrixLoader<RowMajor, Contiguous::K> {};

// Element (mn, k) = p[k * ld + mn]: a row-major matrix read along its columns.
struct AlongColumns : MatrixLoader<RowMajor, Contiguous::MN> {};

// C(m, n) -> out[m * ld + n] (+ bias[n]): the one dense store with a bias, so not a MatrixStore.
struct RowMajorOutput {
  float* out;
  int64_t ld;
  const float* bias;
  GEMM_HD void operator()(int, int m, int n, float v) const {
    out[m * ld + n] = bias ? v + bias[n] : v;
  }
};

}  // namespace convnet::cuda::linear_gemm
