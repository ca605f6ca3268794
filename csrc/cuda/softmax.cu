// CUDA twins of the softmax family.
//
// Mapping: one block per row (grid-stride over rows when n exceeds the grid), blockDim a
// multiple of 32 up to 256 (fewer threads for small k: 32 for k <= 32). Threads stride along
// the row (coalesced), and each block reduction (row max, then sum of exp) is a warp-shuffle
// butterfly followed by a shuffle over the per-warp partials kept in shared memory; every warp
// finishes the reduction itself, so all threads hold the result without another barrier.
// The row is read three times (max, exp, scale); the second and third reads hit L1/L2.
// Thread 0 writes the row's loss, log(s) - (x[label] - max), in double to scratch memory; a
// single-block kernel then sums those in a fixed order (strided partials, shared-memory tree),
// so the mean is deterministic: no float atomics. The mean is copied to the host, which syncs.
//
// ptxas -v (sm_90, CUDA 13, -O3), no spills: softmax_xent_kernel 28 regs + 32 B smem,
//   mean_kernel 30 regs + 2048 B smem, softmax_xent_backward_kernel 24 regs.
#include <cmath>

#include "../core/device.h"
#include "../kernels/softmax.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kMaxGrid = 65535 * 8;
constexpr int kMeanThreads = 256;  // a power of two for the tree

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// Reduction over the block; blockDim.x a multiple of 32; every thread gets the result.
// `partial` holds one value per warp; the leading barrier lets it be reused back to back.
template <class Op>
__device__ float block_reduce(float v, Op op, float identity, float* partial) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? partial[lane] : identity;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void softmax_xent_kernel(const float* __restrict__ logits, const int32_t* __restrict__ labels,
                                    float* __restrict__ probs, double* __restrict__ row_loss,
                                    int64_t n, int k) {
  __shared__ float partial[kMaxThreads / 32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const float* x = logits + row * k;
    float* p = probs + row * k;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < k; j += blockDim.x) m = fmaxf(m, x[j]);
    m = block_reduce(m, MaxOp(), -INFINITY, partial);
    float s = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      float e = expf(x[j] - m);
      p[j] = e;
      s += e;
    }
    s = block_reduce(s, SumOp(), 0.f, partial);
    const float inv = 1.f / s;
    for (int j = threadIdx.x; j < k; j += blockDim.x) p[j] *= inv;  // this thread's own writes
    // s >= 1 (the max contributes 1), so log(s) never underflows.
    if (threadIdx.x == 0) row_loss[row] = log((double)s) - ((double)x[labels[row]] - (double)m);
  }
}

// One block: fixed-order sum of the per-row losses, divided by n.
__global__ void mean_kernel(const double* __restrict__ row_loss, int64_t n, double* __restrict__ out) {
  __shared__ double partial[kMeanThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kMeanThreads) s += row_loss[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int w = kMeanThreads / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = partial[0] / (double)n;
}

__global__ void softmax_xent_backward_kernel(const float* __restrict__ probs,
                                             const int32_t* __restrict__ labels,
                                             float* __restrict__ dlogits, int64_t n, int k) {
  const float fn = (float)n;
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const float* p = probs + row * k;
    float* d = dlogits + row * k;
    const int label = labels[row];
    for (int j = threadIdx.x; j < k; j += blockDim.x) d[j] = (p[j] - (j == label ? 1.f : 0.f)) / fn;
  }
}

int threads_for(int64_t k) {
  int64_t t = (k + 31) / 32 * 32;
  return (int)(t < kMaxThreads ? t : kMaxThreads);
}

unsigned grid_for(int64_t n) { return (unsigned)(n < kMaxGrid ? n : kMaxGrid); }

// Scratch from the caching allocator, returned even when a launch throws.
struct Scratch {
  int device;
  size_t nbytes;
  void* p;
  Scratch(size_t bytes) : nbytes(bytes) {
    CUDA_CHECK(cudaGetDevice(&device));
    p = gpu::allocate(device, nbytes);
  }
  ~Scratch() { gpu::deallocate(device, p, nbytes); }
};

}  // namespace

void softmax_cross_entropy(const float* logits, const int32_t* labels, float* probs, int64_t n,
                           int64_t k, double* mean_loss) {
  Scratch scratch((size_t)(n + 1) * sizeof(double));
  double* row_loss = static_cast<double*>(scratch.p);
  double* mean = row_loss + n;
  softmax_xent_kernel<<<grid_for(n), threads_for(k), 0, stream()>>>(logits, labels, probs, row_loss,
                                                                     n, (int)k);
  CUDA_CHECK_LAUNCH("softmax_xent_kernel");
  mean_kernel<<<1, kMeanThreads, 0, stream()>>>(row_loss, n, mean);
  CUDA_CHECK_LAUNCH("mean_kernel");
  CUDA_CHECK(cudaMemcpyAsync(mean_loss, mean, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void softmax_cross_entropy_backward(const float* probs, const int32_t* labels, float* dlogits,
                                    int64_t n, int64_t k) {
  softmax_xent_backward_kernel<<<grid_for(n), threads_for(k), 0, stream()>>>(probs, labels, dlogits,
                                                                              n, (int)k);
  CUDA_CHECK_LAUNCH("softmax_xent_backward_kernel");
}

}  // namespace convnet::cuda
