// Deterministic per-channel sums (bias gradients of conv and linear). One block of 256 threads
// per channel: thread t adds elements t, t+256, ... of the channel in order, then a fixed
// shared-memory tree adds the 256 partials. Same inputs, same bits, no atomics.
#include "gemm.cuh"

namespace convnet::cuda {
namespace {

constexpr int kSumThreads = 256;

__global__ void __launch_bounds__(kSumThreads)
channel_sum_kernel(const float* __restrict__ in, int outer_inner, FastDiv inner, int64_t channels,
                   float* __restrict__ out) {
  __shared__ float buf[kSumThreads];
  const int64_t c = blockIdx.x;
  const int64_t inner_n = inner.d;
  float s = 0.f;
  for (int i = threadIdx.x; i < outer_inner; i += kSumThreads) {
    int o = inner.div(i), j = inner.mod(i, o);
    s += in[(o * channels + c) * inner_n + j];
  }
  buf[threadIdx.x] = s;
  __syncthreads();
#pragma unroll
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) buf[threadIdx.x] += buf[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[c] = buf[0];
}

}  // namespace

void channel_sum(const float* in, int64_t outer, int64_t channels, int64_t inner, float* out) {
  if (channels == 0) return;
  CHECK_VALUE(outer * inner < INT32_MAX && inner >= 0 && channels < INT32_MAX,
              "bias gradient too large for 32-bit indexing");
  channel_sum_kernel<<<(unsigned)channels, kSumThreads, 0, stream()>>>(in, (int)(outer * inner),
                                                                        FastDiv(inner), channels, out);
  CUDA_CHECK_LAUNCH("channel_sum_kernel");
}

}  // namespace convnet::cuda
