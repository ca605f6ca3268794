// CUDA twins of the softmax family.
//
// Mapping: one block per row (grid-stride over rows when n exceeds the grid), blockDim a
// multiple of 32 up to 256 (fewer threads for small k: 32 for k <= 32). Threads stride along
// the row (coalesced), and each block reduction (row max, then sum of exp) is a warp-shuffle
// butterfly followed by a shuffle over the per-warp partials kept in shared memory; every warp
// finishes the reduction itself, so all threads hold the result without another barrier.
// The row is read three times (max, exp, scale); the second and third reads hit L1/L2.
// Thread 0 writes the row's loss, log(s) - (x[label] - max), in double to scratch memory, and
// the row's count of non-finite logits (counted in the first read); a single-block kernel then
// sums those in a fixed order (strided partials, shared-memory tree), so the mean is
// deterministic: no float atomics, and finds the first row with a bad label. The findings are
// copied to the host together: one sync a call, where checking the labels and the logits first
// took two more.
//
// ptxas -v (sm_90, CUDA 13, -O3), no spills: softmax_xent_kernel 28 regs + 64 B smem,
//   findings_kernel 30 regs + 6144 B smem, softmax_xent_backward_kernel 24 regs.
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
template <class T>
struct SumOp {
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Reduction over the block; blockDim.x a multiple of 32; every thread gets the result.
// `partial` holds one value per warp; the leading barrier lets it be reused back to back.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity, T* partial) {
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
                                    int* __restrict__ row_nonfinite, int64_t n, int k) {
  __shared__ float partial[kMaxThreads / 32];
  __shared__ int count_partial[kMaxThreads / 32];
  for (int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const float* x = logits + row * k;
    float* p = probs + row * k;
    float m = -INFINITY;
    int bad = 0;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      const float v = x[j];
      m = fmaxf(m, v);
      bad += !isfinite(v);
    }
    // The exact count only for a row that has a bad value (the test is uniform over the block).
    if (__syncthreads_count(bad)) bad = block_reduce(bad, SumOp<int>(), 0, count_partial);
    m = block_reduce(m, MaxOp(), -INFINITY, partial);
    float s = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      float e = expf(x[j] - m);
      p[j] = e;
      s += e;
    }
    s = block_reduce(s, SumOp<float>(), 0.f, partial);
    const float inv = 1.f / s;
    for (int j = threadIdx.x; j < k; j += blockDim.x) p[j] *= inv;  // this thread's own writes
    if (threadIdx.x == 0) {
      // s >= 1 (the max contributes 1), so log(s) never underflows. A bad label reads nothing.
      const int label = labels[row];
      row_loss[row] = (unsigned)label < (unsigned)k ? log((double)s) - ((double)x[label] - (double)m) : 0.0;
      row_nonfinite[row] = bad;
    }
  }
}

// One block: the fixed-order sum of the per-row losses divided by n, the number of non-finite
// logits and the first row with a label outside [0, k).
__global__ void findings_kernel(const double* __restrict__ row_loss, const int* __restrict__ row_nonfinite,
                                const int32_t* __restrict__ labels, int64_t n, int k,
                                SoftmaxFindings* __restrict__ out) {
  __shared__ double loss[kMeanThreads];
  __shared__ long long nonfinite[kMeanThreads], first_bad[kMeanThreads];
  double s = 0.0;
  long long c = 0, f = n;
  for (int64_t i = threadIdx.x; i < n; i += kMeanThreads) {
    s += row_loss[i];
    c += row_nonfinite[i];
    if (f == n && (unsigned)labels[i] >= (unsigned)k) f = i;  // the thread's rows ascend
  }
  loss[threadIdx.x] = s;
  nonfinite[threadIdx.x] = c;
  first_bad[threadIdx.x] = f;
  __syncthreads();
  for (int w = kMeanThreads / 2; w > 0; w >>= 1) {
    if ((int)threadIdx.x < w) {
      loss[threadIdx.x] += loss[threadIdx.x + w];
      nonfinite[threadIdx.x] += nonfinite[threadIdx.x + w];
      first_bad[threadIdx.x] = min(first_bad[threadIdx.x], first_bad[threadIdx.x + w]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const long long bad_row = first_bad[0] < n ? first_bad[0] : -1;
    *out = {loss[0] / (double)n, nonfinite[0], bad_row, bad_row < 0 ? 0 : labels[bad_row]};
  }
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

}  // namespace

void softmax_cross_entropy(const float* logits, const int32_t* labels, float* probs, int64_t n,
                           int64_t k, SoftmaxFindings* found) {
  // [findings][row_loss: n doubles][row_nonfinite: n ints], each part 8-byte aligned.
  GpuScratch scratch(sizeof(SoftmaxFindings) + (size_t)n * (sizeof(double) + sizeof(int)));
  SoftmaxFindings* d_found = static_cast<SoftmaxFindings*>(scratch.p);
  double* row_loss = reinterpret_cast<double*>(d_found + 1);
  int* row_nonfinite = reinterpret_cast<int*>(row_loss + n);
  softmax_xent_kernel<<<grid_for(n), threads_for(k), 0, stream()>>>(logits, labels, probs, row_loss,
                                                                     row_nonfinite, n, (int)k);
  CUDA_CHECK_LAUNCH("softmax_xent_kernel");
  findings_kernel<<<1, kMeanThreads, 0, stream()>>>(row_loss, row_nonfinite, labels, n, (int)k, d_found);
  CUDA_CHECK_LAUNCH("findings_kernel");
  // The op's one round trip: the loss and the checks come back together.
  CUDA_CHECK(cudaMemcpyAsync(found, d_found, sizeof(SoftmaxFindings), cudaMemcpyDeviceToHost, stream()));
  CUDA_CHECK(cudaStreamSynchronize(stream()));
}

void softmax_cross_entropy_backward(const float* probs, const int32_t* labels, float* dlogits,
                                    int64_t n, int64_t k) {
  softmax_xent_backward_kernel<<<grid_for(n), threads_for(k), 0, stream()>>>(probs, labels, dlogits,
                                                                              n, (int)k);
  CUDA_CHECK_LAUNCH("softmax_xent_backward_kernel");
}

}  // namespace convnet::cuda
