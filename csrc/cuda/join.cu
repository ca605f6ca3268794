// CUDA twins of the join family: memory-bound grid-stride loops, 256 threads a block.
// copy_rows: grid y over rows (looped past 65535), x over the columns of a row, so no index
// division (a flat index split by a 64-bit i / cols per element took 1.4 ms of the one-device
// AlexNet step on an H200 at 47382a3, mostly the grouped LRN layers' split and concat, which
// now need no copies); by 4 floats when both rows start 16-byte aligned and the column count
// allows (the AlexNet shapes).
#include <algorithm>
#include <cstdint>

#include "../kernels/join.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

__global__ void add_inplace_kernel(float* __restrict__ a, const float* __restrict__ b, int64_t n) {
  int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride) a[i] += b[i];
}

template <class V>
__global__ void copy_rows_kernel(const V* __restrict__ src, int64_t src_stride, V* __restrict__ dst,
                                 int64_t dst_stride, int64_t rows, int64_t cols) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const V* s = src + r * src_stride;
    V* d = dst + r * dst_stride;
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < cols; c += (int64_t)gridDim.x * blockDim.x)
      d[c] = s[c];
  }
}

template <class V>
void launch_copy_rows(const V* src, int64_t src_stride, V* dst, int64_t dst_stride, int64_t rows, int64_t cols) {
  const unsigned y = (unsigned)std::min<int64_t>(rows, 65535);
  const unsigned x = std::max(1u, std::min(blocks_for(cols, 256), (unsigned)std::max<int64_t>(1, 4096 / y)));
  copy_rows_kernel<<<dim3(x, y), 256, 0, stream()>>>(src, src_stride, dst, dst_stride, rows, cols);
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
  const bool by4 = (reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) % 16 == 0 &&
                   (src_stride | dst_stride | cols) % 4 == 0;
  if (by4)
    launch_copy_rows(reinterpret_cast<const float4*>(src), src_stride / 4, reinterpret_cast<float4*>(dst),
                     dst_stride / 4, rows, cols / 4);
  else
    launch_copy_rows(src, src_stride, dst, dst_stride, rows, cols);
  CUDA_CHECK_LAUNCH("copy_rows_kernel");
}

}  // namespace convnet::cuda
