// CUDA twins of the join family. Memory-bound grid-stride loops, 256 threads a block, one
// element a thread per step; copy_rows maps the flat index i to (row i / cols, column i % cols).
#include "../kernels/join.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

__global__ void add_inplace_kernel(float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) a[i] += b[i];
}

__global__ void copy_rows_kernel(const float* __restrict__ src, int64_t src_stride, float* __restrict__ dst,
                                 int64_t dst_stride, int64_t rows, int64_t cols) {
  int64_t n = rows * cols;
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) {
    int64_t r = i / cols, c = i - r * cols;
    dst[r * dst_stride + c] = src[r * src_stride + c];
  }
}

}  // namespace

void add_inplace(float* a, const float* b, int64_t n) {
  if (n == 0) return;
  add_inplace_kernel<<<blocks_for(n, 256), 256, 0, stream()>>>(a, b, n);
  CUDA_CHECK_LAUNCH("add_inplace_kernel");
}

void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t rows,
               int64_t cols) {
  if (rows == 0 || cols == 0) return;
  copy_rows_kernel<<<blocks_for(rows * cols, 256), 256, 0, stream()>>>(src, src_stride, dst, dst_stride, rows,
                                                                        cols);
  CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

}  // namespace convnet::cuda
