// Deterministic per-channel sums (bias gradients of conv and linear), no atomics:
//   out[c] = sum over i < outer, j < inner of in[(i * channels + c) * inner + j].
// The outer*inner terms of a channel are cut into fixed slices of kSliceTerms (longer past 65535
// such slices, grid.y's limit: more than 268M terms a channel were refused); block (c, slice)
// adds its slice (thread t takes terms t, t+256, ... in order, then a fixed shared-memory tree),
// and when there is more than one slice a second kernel adds each channel's slice sums in order.
// A conv1 bias gradient (96 channels x 387200 terms at batch 128) thus runs on ~9000 blocks
// instead of 96 latency-bound ones. ptxas: see csrc/cuda/conv.cu.
#include <algorithm>

#include "gemm.cuh"

namespace convnet::cuda {
namespace {

constexpr int kSumThreads = 256;
constexpr int kSliceTerms = kSumThreads * 16;

// One channel's slice [begin, end) of the flattened (i, j) terms.
__global__ void __launch_bounds__(kSumThreads)
channel_slice_sum_kernel(const float* __restrict__ in, int terms, int slice_terms, FastDiv inner,
                         int64_t channels, float* __restrict__ out, int slices) {
  __shared__ float buf[kSumThreads];
  const int64_t c = blockIdx.x;
  const int slice = blockIdx.y;
  const int begin = slice * slice_terms;  // < terms: no wrap
  const int end = (int)min((int64_t)terms, (int64_t)begin + slice_terms);
  const int64_t inner_n = inner.d;
  float s = 0.f;
#pragma unroll 4
  for (int t = begin + threadIdx.x; t < end; t += kSumThreads) {
    int i = inner.div(t), j = inner.mod(t, i);
    s += in[(i * channels + c) * inner_n + j];
  }
  buf[threadIdx.x] = s;
  __syncthreads();
#pragma unroll
  for (int w = kSumThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) buf[threadIdx.x] += buf[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[c * slices + slice] = buf[0];
}

// out[c] = partial[c * slices + 0] + ... + partial[c * slices + slices - 1], in that order.
__global__ void __launch_bounds__(kSumThreads)
channel_slices_total_kernel(const float* __restrict__ partial, int slices, int64_t channels, float* __restrict__ out) {
  for (int64_t c = blockIdx.x * (int64_t)kSumThreads + threadIdx.x; c < channels; c += (int64_t)gridDim.x * kSumThreads) {
    float s = 0.f;
    for (int k = 0; k < slices; ++k) s += partial[c * slices + k];
    out[c] = s;
  }
}

}  // namespace

void channel_sum(const float* in, int64_t outer, int64_t channels, int64_t inner, float* out) {
  if (channels == 0) return;
  // room below 2^31 for the loop's last step (t += kSumThreads)
  CHECK_VALUE(outer >= 0 && inner >= 0 && outer * inner < INT32_MAX - kSumThreads && channels < INT32_MAX,
              "bias gradient too large for 32-bit indexing");
  const int terms = (int)(outer * inner);
  // slices of kSliceTerms, or longer (whole blocks of kSumThreads) to stay within grid.y's 65535
  const int64_t longest = ((int64_t)terms + 65534) / 65535;
  const int slice_terms =
      (int)std::max<int64_t>(kSliceTerms, (longest + kSumThreads - 1) / kSumThreads * kSumThreads);
  const int slices = terms > slice_terms ? (terms + slice_terms - 1) / slice_terms : 1;
  const dim3 grid((unsigned)channels, (unsigned)slices);
  if (slices == 1) {  // also covers terms == 0: the block writes 0
    channel_slice_sum_kernel<<<grid, kSumThreads, 0, stream()>>>(in, terms, slice_terms, FastDiv(inner), channels, out,
                                                                 1);
    CUDA_CHECK_LAUNCH("channel_slice_sum_kernel");
    return;
  }
  GpuScratch ws(sizeof(float) * (size_t)(channels * slices));
  float* partial = static_cast<float*>(ws.p);
  channel_slice_sum_kernel<<<grid, kSumThreads, 0, stream()>>>(in, terms, slice_terms, FastDiv(inner), channels,
                                                               partial, slices);
  CUDA_CHECK_LAUNCH("channel_slice_sum_kernel");
  channel_slices_total_kernel<<<blocks_for(channels, kSumThreads), kSumThreads, 0, stream()>>>(partial, slices, channels,
                                                                                               out);
  CUDA_CHECK_LAUNCH("channel_slices_total_kernel");
}

}  // namespace convnet::cuda
