// CUDA twins of the max-pool family.
//
// Forward: one thread per output element (ow fastest, so a warp's loads walk along W); it
// scans its window in row-major order with pool_better, as the CPU twin's value, keeping the
// offset of the maximum when indices are wanted (a register; one extra int32 store). The
// paper's window (3/2) is compiled with its size and stride as constants: the 3x3 loops unroll
// and all nine loads are issued before the first compare (the earlier runtime-size loop kept
// about one load in flight per thread, which is why it reached only half the copy bandwidth);
// other windows use the same code with runtime loops. A warp's stride-2 loads touch twice the
// lines they use, but those are L1/L2 hits (rows shared by neighbouring windows); DRAM sees
// x once. A shared-memory staging of input rows was not chosen: it would save L1 wavefronts,
// which are not the limit at ~20 bytes of DRAM traffic per output.
// Backward, with indices (the training path): one thread per stride x stride tile of the
// input (a 2x2 tile for 3/2), so the index split is paid once per tile. For each element of
// its tile it visits the covering windows (at most ceil(size/stride)^2) in row-major order
// and adds a window's dy where the window's index is the element's own offset: a gather, no
// atomics, deterministic, in the CPU scatter's order (the same bits). An index outside its
// window (or the plane) is never matched by any thread, so it cannot write out of bounds;
// its dy is dropped. Without indices: the forward kernel first writes only the argmax into a
// scratch int32 buffer (the caching allocator), then the same gather runs. Elements no window
// covers (the dropped edge, or gaps when size < stride) get 0.
//
// The flat index is split with 32-bit division when it fits (64-bit division would cost about
// as much as the memory traffic); offsets inside a plane are int32 (planes < 2^31, checked).
//
// ptxas -v (sm_90, CUDA 13.0, -O3), from CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh;
// 0 bytes stack frame, 0 bytes spill stores/loads for all. Registers, <Index, size, stride>:
//   max_pool_kernel (y and indices / argmax only)  <u32,3,2> 31 / 29   <u32,0,0> 26 / 24   <i64,*> <= 31
//   max_pool_gather_kernel                         <u32,3,2> 32        <u32,0,0> 40        <i64,*> <= 40
// Not yet timed on a GPU (the previous forward, a runtime-size loop, ran at 0.50 of copy on an
// H200; the previous backward, which rescanned windows, at 0.08).
#include "../core/device.h"
#include "../kernels/pool.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

constexpr int kThreads = 256;

// Index: the type the flat element index is split in; uint32_t when it fits, as 64-bit division
// costs several times the 32-bit one and would otherwise rival the memory time.
// kSize, kStride: the window as compile-time constants, or 0 for the runtime sh.size / sh.stride.
// kWriteY: false for the argmax-only pass of the backward without indices.
template <class Index, int kSize, int kStride, bool kWriteY>
__global__ void __launch_bounds__(kThreads) max_pool_kernel(const PoolShape sh, const float* __restrict__ x,
                                                             float* __restrict__ y, int32_t* __restrict__ indices) {
  const int size = kSize ? kSize : (int)sh.size, stride = kStride ? kStride : (int)sh.stride, w = (int)sh.w;
  const int64_t hw = sh.h * sh.w;
  const Index total = (Index)(sh.n * sh.c * sh.p * sh.q), p = (Index)sh.p, q = (Index)sh.q;
  for (Index e = blockIdx.x * (Index)blockDim.x + threadIdx.x; e < total; e += (Index)gridDim.x * blockDim.x) {
    const Index ow = e % q, rest = e / q;
    const Index oh = rest % p, plane = rest / p;
    const float* xp = x + (int64_t)plane * hw;
    const int corner = (int)oh * stride * w + (int)ow * stride;
    float m = __ldg(xp + corner);
    int at = corner;
#pragma unroll
    for (int kh = 0; kh < size; ++kh) {
#pragma unroll
      for (int kw = 0; kw < size; ++kw) {
        const int o = corner + kh * w + kw;
        const float v = __ldg(xp + o);
        const bool take = pool_better(v, m);
        m = take ? v : m;
        at = take ? o : at;
      }
    }
    if (kWriteY) y[e] = m;
    if (indices) indices[e] = at;
  }
}

// One thread per stride x stride tile of an input plane; see the header comment.
template <class Index, int kSize, int kStride>
__global__ void __launch_bounds__(kThreads) max_pool_gather_kernel(const PoolShape sh,
                                                                    const int32_t* __restrict__ indices,
                                                                    const float* __restrict__ dy,
                                                                    float* __restrict__ dx) {
  const int size = kSize ? kSize : (int)sh.size, stride = kStride ? kStride : (int)sh.stride;
  // windows covering an element, at most, each way (compile-time windows only)
  constexpr int kCover = kSize && kStride ? (kSize + kStride - 1) / kStride : 0;
  constexpr int kStrideUnroll = kStride ? kStride : 1;  // no unrolling for a runtime stride
  const int h = (int)sh.h, w = (int)sh.w, p = (int)sh.p, q = (int)sh.q;
  const Index tiles_h = (Index)((h + stride - 1) / stride), tiles_w = (Index)((w + stride - 1) / stride);
  const Index total = (Index)(sh.n * sh.c) * tiles_h * tiles_w;
  for (Index e = blockIdx.x * (Index)blockDim.x + threadIdx.x; e < total; e += (Index)gridDim.x * blockDim.x) {
    const Index tc = e % tiles_w, rest = e / tiles_w;
    const Index tr = rest % tiles_h, plane = rest / tiles_h;
    const int32_t* ip = indices + (int64_t)plane * p * q;
    const float* dyp = dy + (int64_t)plane * p * q;
    float* dxp = dx + (int64_t)plane * h * w;
#pragma unroll kStrideUnroll
    for (int a = 0; a < stride; ++a) {
      const int ih = (int)tr * stride + a;
      if (ih >= h) break;
      // windows oh with oh*stride <= ih <= oh*stride + size - 1, inside the output
      const int oh_lo = ih >= size ? (ih - size) / stride + 1 : 0, oh_hi = min((int)tr, p - 1);
#pragma unroll kStrideUnroll
      for (int b = 0; b < stride; ++b) {
        const int iw = (int)tc * stride + b;
        if (iw >= w) break;
        const int ow_lo = iw >= size ? (iw - size) / stride + 1 : 0, ow_hi = min((int)tc, q - 1);
        const int self = ih * w + iw;
        float acc = 0.f;
        if constexpr (kSize && kStride) {
          // at most kCover windows each way (2 for 3/2): unrolled into predicated code
#pragma unroll
          for (int i = 0; i < kCover; ++i) {
            const int oh = oh_lo + i;
            if (oh > oh_hi) break;
#pragma unroll
            for (int j = 0; j < kCover; ++j) {
              const int ow = ow_lo + j;
              if (ow > ow_hi) break;
              const int o = oh * q + ow;
              if (__ldg(ip + o) == self) acc += __ldg(dyp + o);
            }
          }
        } else {  // the same, plain loops (unrolling them spilled)
          for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
              const int o = oh * q + ow;
              if (__ldg(ip + o) == self) acc += __ldg(dyp + o);
            }
          }
        }
        dxp[self] = acc;
      }
    }
  }
}

}  // namespace

// A grid-stride index stays below total + gridDim.x * blockDim.x; keep that inside uint32_t.
bool fits_32(int64_t total) { return total + (int64_t)65535 * 8 * kThreads < ((int64_t)1 << 32); }

namespace {

bool paper_window(const PoolShape& sh) { return sh.size == 3 && sh.stride == 2; }

template <bool kWriteY>
void launch_max_pool(const PoolShape& sh, const float* x, float* y, int32_t* indices) {
  const int64_t total = sh.n * sh.c * sh.p * sh.q;
  const unsigned blocks = blocks_for(total, kThreads);
  if (fits_32(total)) {
    if (paper_window(sh))
      max_pool_kernel<uint32_t, 3, 2, kWriteY><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
    else
      max_pool_kernel<uint32_t, 0, 0, kWriteY><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
  } else {
    if (paper_window(sh))
      max_pool_kernel<int64_t, 3, 2, kWriteY><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
    else
      max_pool_kernel<int64_t, 0, 0, kWriteY><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
  }
}

void launch_gather(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx) {
  const int64_t total = sh.n * sh.c * ((sh.h + sh.stride - 1) / sh.stride) * ((sh.w + sh.stride - 1) / sh.stride);
  const unsigned blocks = blocks_for(total, kThreads);
  if (fits_32(total)) {
    if (paper_window(sh))
      max_pool_gather_kernel<uint32_t, 3, 2><<<blocks, kThreads, 0, stream()>>>(sh, indices, dy, dx);
    else
      max_pool_gather_kernel<uint32_t, 0, 0><<<blocks, kThreads, 0, stream()>>>(sh, indices, dy, dx);
  } else {
    if (paper_window(sh))
      max_pool_gather_kernel<int64_t, 3, 2><<<blocks, kThreads, 0, stream()>>>(sh, indices, dy, dx);
    else
      max_pool_gather_kernel<int64_t, 0, 0><<<blocks, kThreads, 0, stream()>>>(sh, indices, dy, dx);
  }
}

}  // namespace

void max_pool(const PoolShape& sh, const float* x, float* y, int32_t* indices) {
  launch_max_pool<true>(sh, x, y, indices);
  CUDA_CHECK_LAUNCH("max_pool_kernel");
}

void max_pool_backward_indices(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx,
                               int64_t* invalid) {
  *invalid = 0;  // not checked here: it would need a sync; a bad index gets no gradient
  launch_gather(sh, indices, dy, dx);
  CUDA_CHECK_LAUNCH("max_pool_gather_kernel");
}

// Without saved indices: the argmax into scratch, then the gather. y is not read: the argmax is
// recomputed from x (the same as the first element equal to y, for y = max_pool(x)).
void max_pool_backward(const PoolShape& sh, const float* x, const float* /*y*/, const float* dy, float* dx) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const size_t bytes = (size_t)(sh.n * sh.c * sh.p * sh.q) * sizeof(int32_t);
  int32_t* argmax = static_cast<int32_t*>(gpu::allocate(device, bytes));
  launch_max_pool<false>(sh, x, nullptr, argmax);
  cudaError_t launched = cudaGetLastError();
  if (launched == cudaSuccess) {
    launch_gather(sh, argmax, dy, dx);
    launched = cudaGetLastError();
  }
  gpu::deallocate(device, argmax, bytes);  // stream-ordered: reused only after these kernels
  CUDA_CHECK(launched);
}

}  // namespace convnet::cuda
