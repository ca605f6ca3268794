// The index maps of the fully-connected GEMMs (see csrc/cuda/linear.cu); host-and-device code so
// that tools/emulate_gemm.cu can check them on the CPU.
#pragma once
#include "gemm.cuh"

namespace convnet::cuda::linear_gemm {

// Element (mn, k) = p[mn * ld + k]: a row-major matrix read along its rows.
struct AlongRows {
  const float* p;
  int64_t ld;
  struct Col {
    bool ok;
    const float* row;
  };
  GEMM_HD Col col(int, int mn) const {
    if (mn < 0) return {false, p};
    return {true, p + mn * ld};
  }
  GEMM_HD float at(const Col& c, int k) const { return GEMM_LDG(c.row + k); }
  GEMM_HD const float* ptr(const Col& c, int k) const { return c.row + k; }
};

// Element (mn, k) = p[k * ld + mn]: a row-major matrix read along its columns.
struct AlongColumns {
  const float* p;
  int64_t ld;
  struct Col {
    bool ok;
    const float* column;
  };
  GEMM_HD Col col(int, int mn) const {
    if (mn < 0) return {false, p};
    return {true, p + mn};
  }
  GEMM_HD float at(const Col& c, int k) const { return GEMM_LDG(c.column + k * ld); }
  GEMM_HD const float* ptr(const Col& c, int k) const { return c.column + k * ld; }
};

// C(m, n) -> out[m * ld + n] (+ bias[n]).
struct RowMajorOutput {
  float* out;
  int64_t ld;
  const float* bias;
  GEMM_HD void operator()(int, int m, int n, float v) const {
    out[m * ld + n] = bias ? v + bias[n] : v;
  }
};

}  // namespace convnet::cuda::linear_gemm
