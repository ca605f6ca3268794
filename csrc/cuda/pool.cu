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
// Backward, with indices (the training path): a gather, no atomics, deterministic, in the CPU
// scatter's order (the same bits). A thread takes one column iw of kGatherRows consecutive tile
// rows (each the `stride` input rows tr*stride ..; runtime windows: one tile row); consecutive
// threads take consecutive columns, so each store instruction of a warp writes 32 consecutive
// floats of one row. Grid: x over groups of thread rows (blockDim.y of them), y over planes
// (looped past 65535): no index division. For the compiled 3/2 window a thread first loads the
// indices and dy of all the windows covering its rows (5 window rows x 2 columns: 20 loads in
// flight), then finishes its 8 input rows; a warp's loads of those are 17 consecutive elements of
// each row (L1 hits shared by neighbouring threads; DRAM sees idx and dy once). For each element
// the covering windows are visited in row-major order and a window's dy added where its index is
// the element's own offset. An index outside its window (or the plane) is never matched by any
// thread, so it cannot write out of bounds; its dy is dropped. Without indices: the forward
// kernel first writes only the argmax into a scratch int32 buffer (the caching allocator), then
// the same gather runs. Elements no window covers (the dropped edge, or gaps when size < stride)
// get 0.
// Why several tile rows a thread: with one (2 outputs a thread, its 8 loads mostly L1 hits) the
// H200 ran 55->27 at 146 us, 0.34-0.37 of copy, for ~45 us of instruction issue and ~55 us of
// DRAM traffic: latency-bound. Each block made one round trip (~1.5 us) for ~2.7 KB of DRAM
// traffic, 8 blocks per SM: ~1.9 TB/s at best (the forward, ~5 KB per block's round trip,
// reached 0.76-0.84). With kGatherRows = 4 each round trip carries 4x the bytes (48 registers:
// 5 blocks of 256 per SM, so ~2.5x the bytes in flight per SM).
// Prediction (H200, not yet run): 55->27 batch 128 (dx 148 MB written, idx and dy 36 MB each
// read) 55-90 us (0.6-0.85 of copy; was 146 us); 27->13 and 13->6 likewise ~1.5-2.5x faster.
// Refuted if 55->27 stays above 110 us: then the bound is not the round trips per byte.
// The flat index is split with 32-bit division when it fits (64-bit division would cost about
// as much as the memory traffic); offsets inside a plane are int32 (planes < 2^31, checked).
//
// ptxas -v (sm_90, CUDA 13.0, -O3), from CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh;
// 0 bytes stack frame, 0 bytes spill stores/loads for all. Registers, <Index, size, stride>:
//   max_pool_kernel (y and indices / argmax only)  <u32,3,2> 31 / 29   <u32,0,0> 26 / 24   <i64,*> <= 31
//   max_pool_gather_kernel (no Index: no division)  <3,2> 48 (kGatherRows 4; 32 with one row)  <0,0> 40
// Timed on an H200 (results 2026-11-26-h200-29eff7f): forward 0.74-0.82 of copy.
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

// Tile rows a thread of the compiled-window gather takes (see the header comment: with one, each
// thread made one round trip for two outputs and the kernel was latency-bound).
constexpr int kGatherRows = 4;

// One thread per column iw of kRows consecutive tile rows (the `stride` input rows each),
// consecutive threads on consecutive columns (coalesced loads and stores along a row); see the
// header comment. Grid: x over groups of thread rows (blockDim.y a block), y over planes (looped).
template <int kSize, int kStride>
__global__ void __launch_bounds__(kThreads) max_pool_gather_kernel(const PoolShape sh,
                                                                    const int32_t* __restrict__ indices,
                                                                    const float* __restrict__ dy,
                                                                    float* __restrict__ dx) {
  const int size = kSize ? kSize : (int)sh.size, stride = kStride ? kStride : (int)sh.stride;
  // windows covering an element, at most, each way (compile-time windows only)
  constexpr int kCover = kSize && kStride ? (kSize + kStride - 1) / kStride : 1;
  constexpr int kStrideUnroll = kStride ? kStride : 1;  // no unrolling for a runtime stride
  constexpr int kRows = kSize && kStride ? kGatherRows : 1;
  const int h = (int)sh.h, w = (int)sh.w, p = (int)sh.p, q = (int)sh.q;
  const int tiles_h = (h + stride - 1) / stride;
  const int tr0 = ((int)blockIdx.x * (int)blockDim.y + (int)threadIdx.y) * kRows;
  if (tr0 >= tiles_h) return;  // no barrier in this kernel
  const int64_t planes = sh.n * sh.c;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int32_t* ip = indices + plane * p * q;
    const float* dyp = dy + plane * p * q;
    float* dxp = dx + plane * h * w;
    for (int iw = threadIdx.x; iw < w; iw += blockDim.x) {
      // windows ow with ow*stride <= iw <= ow*stride + size - 1, inside the output
      const int ow_lo = iw >= size ? (iw - size) / stride + 1 : 0, ow_hi = min(iw / stride, q - 1);
      if constexpr (kSize && kStride) {
        // The windows oh = tr0 - kCover + 1 .. tr0 + kRows - 1 (those covering the thread's tile
        // rows), ow = ow_lo ..: all their indices and dy loaded at once (no load waits on a
        // compare; 4 x (kRows + kCover - 1) x kCover loads in flight); -1 (never an offset) outside.
        constexpr int kWin = kRows + kCover - 1;
        int32_t wi[kWin][kCover];
        float wd[kWin][kCover];
#pragma unroll
        for (int i = 0; i < kWin; ++i) {
          const int oh = tr0 - kCover + 1 + i;
#pragma unroll
          for (int j = 0; j < kCover; ++j) {
            const int ow = ow_lo + j;
            const bool in = oh >= 0 && oh < p && ow <= ow_hi;
            const int o = in ? oh * q + ow : 0;
            wi[i][j] = in ? __ldg(ip + o) : -1;
            wd[i][j] = in ? __ldg(dyp + o) : 0.f;
          }
        }
#pragma unroll
        for (int t = 0; t < kRows; ++t) {
          const int tr = tr0 + t;
#pragma unroll
          for (int a = 0; a < kStride; ++a) {
            const int ih = tr * kStride + a;
            if (ih >= h) break;
            const int self = ih * w + iw;
            float acc = 0.f;
            // row-major window order, as the CPU scatter adds (the same bits)
#pragma unroll
            for (int i = 0; i < kCover; ++i) {
              const int oh = tr - kCover + 1 + i;
              const bool covers_row = oh * kStride + kSize - 1 >= ih;  // oh*stride <= ih holds: oh <= tr
#pragma unroll
              for (int j = 0; j < kCover; ++j)
                if (covers_row && wi[t + i][j] == self) acc += wd[t + i][j];
            }
            dxp[self] = acc;
          }
        }
      } else {  // runtime windows: plain loops over the covering windows, one tile row
        const int tr = tr0;
#pragma unroll kStrideUnroll
        for (int a = 0; a < stride; ++a) {
          const int ih = tr * stride + a;
          if (ih >= h) break;
          const int oh_lo = ih >= size ? (ih - size) / stride + 1 : 0, oh_hi = min(tr, p - 1);
          const int self = ih * w + iw;
          float acc = 0.f;
          for (int oh = oh_lo; oh <= oh_hi; ++oh) {
            for (int ow = ow_lo; ow <= ow_hi; ++ow) {
              const int o = oh * q + ow;
              if (__ldg(ip + o) == self) acc += __ldg(dyp + o);
            }
          }
          dxp[self] = acc;
        }
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

// The gather's block: blockDim.x the power of two from 8 to 128 that covers w when it can (wider
// rows loop), blockDim.y thread rows up to 256 threads in all, but no more rows than a plane has
// (rounded up to a power of two; at least 64 threads): a warp spans rows when x < 32, so narrow
// planes such as 13 wide (16 x 8 threads for 7 tile rows) keep most lanes busy.
// Thread rows of a plane: its tile rows, kGatherRows to a thread for the compiled window.
int64_t gather_thread_rows(const PoolShape& sh) {
  const int64_t tiles_h = (sh.h + sh.stride - 1) / sh.stride, rows = paper_window(sh) ? kGatherRows : 1;
  return (tiles_h + rows - 1) / rows;
}

dim3 gather_block(const PoolShape& sh) {
  int x = 8;
  while (x < 128 && x < sh.w) x *= 2;
  const int64_t thread_rows = gather_thread_rows(sh);
  int y = 1;
  while (y < kThreads / x && (y < thread_rows || y * x < 64)) y *= 2;
  return dim3(x, y);
}

void launch_gather(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx) {
  const dim3 block = gather_block(sh);
  const int64_t thread_rows = gather_thread_rows(sh), planes = sh.n * sh.c;
  const dim3 grid((unsigned)((thread_rows + block.y - 1) / block.y), (unsigned)std::min<int64_t>(planes, 65535));
  if (paper_window(sh))
    max_pool_gather_kernel<3, 2><<<grid, block, 0, stream()>>>(sh, indices, dy, dx);
  else
    max_pool_gather_kernel<0, 0><<<grid, block, 0, stream()>>>(sh, indices, dy, dx);
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
