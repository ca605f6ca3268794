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
// scatter's order (the same bits): for each input element the windows covering it are visited
// in row-major order and a window's dy added where its index is the element's own offset. An
// index outside its window (or the plane) is never matched by any thread, so it cannot write
// out of bounds; its dy is dropped. Elements no window covers (the dropped edge, or gaps when
// size < stride) get 0. Without indices: the forward kernel first writes only the argmax into a
// scratch int32 buffer (the caching allocator), then the same gather runs.
// - Compiled 3/2 window (max_pool_gather_tiles_kernel): a thread takes one tile column (2 input
//   columns) of kGatherRows tile rows, i.e. 2 x 8 input elements; it first loads the indices and
//   dy of the 5 x 2 windows covering them (20 loads in flight), and since which of those covers
//   which element is then a compile-time fact, each element costs only the compares of its own
//   windows (4, 2, 2 or 1). Small planes put several planes in a block (blockDim.z).
// - Runtime windows (max_pool_gather_kernel): a thread per (input column, tile row), plain
//   loops over the covering windows.
// Grids: x over groups of thread rows, y over planes (looped past 65535): no index division.
// History (H200): one input column and one tile row a thread ran 55->27 at 146 us, 0.34-0.37
// of copy (latency-bound: one round trip per 2 outputs); one column and 4 tile rows at 95 us,
// 0.59 of copy (47382a3), then issue-bound (ncu: 3.2 instructions a cycle, integer pipe 73%
// busy): every element compared against all four windows of its column pair with runtime
// bounds, ~56 instructions an element. The tile-column kernel needs about half of that.
// Predicted 55->27 at 55-70 us (0.8-0.95 of copy), 27->13 likewise, 13->6 (0.15-0.3: one-plane
// blocks of 64 threads, most idle) 2-3x faster. Measured (deb597b): 55->27 66 us, 0.84 of copy;
// 27->13 48 us, 0.76; 13->6 36 -> 17 us, 0.57 (a launch of that size is mostly fixed costs).
// The flat index is split with 32-bit division when it fits (64-bit division would cost about
// as much as the memory traffic); offsets inside a plane are int32 (planes < 2^31, checked).
//
// ptxas -v (sm_90, CUDA 13.0, -O3), from CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh;
// 0 bytes stack frame, 0 bytes spill stores/loads for all. Registers, <Index, size, stride>:
//   max_pool_kernel (y and indices / argmax only)  <u32,3,2> 31 / 29 (29 writing codes)   <u32,0,0> 26 / 24
//   <i64,*> <= 31   max_pool_gather_tiles_kernel <3,2> 60 (48 reading codes or staged, 16 KB shared)
//   max_pool_gather_kernel 40
// Timed on an H200 (results 2026-11-26-h200-29eff7f): forward 0.74-0.82 of copy.
//
// Variants (CONVNET_POOL_VARIANT) differ only in the backward, for the compiled 3/2 window.
// Without indices, an argmax pass writes scratch that the gather then reads. 0 (default): each
// window's argmax as its int32 offset in the plane, the format of saved indices: 404 MB moved at
// 55->27, batch 128 (x 149 MB read, dy 36, dx 149 written, the argmax 36 written and read back),
// 0.72 / 0.67 / 0.51 of copy (55->27 / 27->13 / 13->6; H200, ed1aee4), the pass 60 us and the
// gather 62 at 55->27 (ncu, both at 64-73% of DRAM bandwidth). 1: the argmax as a one-byte code,
// its position in the window (kh * 3 + kw), so the scratch is 9 MB, not 36, and 350 MB move in
// all; the gather compares each code with a compile-time constant instead of a computed offset.
// Prediction (H200): 55->27 from 125 us to 105-110 (0.82-0.86 of copy), 27->13 likewise
// (0.67 -> 0.76-0.8); 13->6 (two launches of small planes) about as now. Refuted where
// bench_pool.py's "v1" rows are no faster than "v0" of the same run.
// 2: variant 1, and both gathers (from saved indices too) stage dx through shared memory where a
// block covers whole planes (all three AlexNet pools), writing it out as one contiguous run
// (max_pool_gather_tiles_kernel: why). Prediction (H200): the gather from saved indices 62 ->
// ~50 us at 55->27 (0.84 -> ~0.95 of copy), 27->13 0.77 -> ~0.9, if L2 (87-89% busy in ncu) is
// its limit; the backward without indices a further ~10 us below variant 1. Refuted where the
// "v2" rows are no faster than "v1" (without indices) and "v0" (with).
// Tried and removed (H200): a one-pass backward, the gather recomputing each covering window's
// argmax from x (90 loads a thread): 144 / 104 / 29 us against 125 / 87 / 29, issue- and
// latency-bound at 39% occupancy (0e82fa4); whole planes a block through shared memory: 1.3-2.8x
// slower than variant 0 in every row (0627c99).
#include <algorithm>

#include "../core/device.h"
#include "../kernels/pool.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

constexpr int kThreads = 256;

// The size x size window at offset `corner` of plane xp (row length w), scanned in row-major
// order with pool_better: its maximum m, the offset `at` of its first maximal element and that
// element's code, its position in the window (kh * size + kw). With the size a compile-time
// constant the loops unroll and every load is issued before the first compare.
__device__ __forceinline__ void window_max(const float* __restrict__ xp, int corner, int w, int size, float& m,
                                           int& at, int& code) {
  m = __ldg(xp + corner);
  at = corner;
  code = 0;
#pragma unroll
  for (int kh = 0; kh < size; ++kh) {
#pragma unroll
    for (int kw = 0; kw < size; ++kw) {
      const int o = corner + kh * w + kw;
      const float v = __ldg(xp + o);
      const bool take = pool_better(v, m);
      m = take ? v : m;
      at = take ? o : at;
      code = take ? kh * size + kw : code;
    }
  }
}

// What an argmax is stored as: int32_t, its offset in the plane (saved indices); uint8_t, its
// code in the window (the scratch of variants 1 and 2's backward; compiled 3/2 window only).
template <class Arg>
__device__ __forceinline__ Arg argmax_as(int at, int code) {
  return sizeof(Arg) == 1 ? (Arg)code : (Arg)at;
}

// Index: the type the flat element index is split in; uint32_t when it fits, as 64-bit division
// costs several times the 32-bit one and would otherwise rival the memory time.
// kSize, kStride: the window as compile-time constants, or 0 for the runtime sh.size / sh.stride.
// kWriteY: false for the argmax-only pass of the backward without indices. Arg: see argmax_as.
template <class Index, int kSize, int kStride, bool kWriteY, class Arg = int32_t>
__global__ void __launch_bounds__(kThreads) max_pool_kernel(const PoolShape sh, const float* __restrict__ x,
                                                             float* __restrict__ y, Arg* __restrict__ indices) {
  const int size = kSize ? kSize : (int)sh.size, stride = kStride ? kStride : (int)sh.stride, w = (int)sh.w;
  const int64_t hw = sh.h * sh.w;
  const Index total = (Index)(sh.n * sh.c * sh.p * sh.q), p = (Index)sh.p, q = (Index)sh.q;
  for (Index e = blockIdx.x * (Index)blockDim.x + threadIdx.x; e < total; e += (Index)gridDim.x * blockDim.x) {
    const Index ow = e % q, rest = e / q;
    const Index oh = rest % p, plane = rest / p;
    float m;
    int at, code;
    window_max(x + (int64_t)plane * hw, (int)oh * stride * w + (int)ow * stride, w, size, m, at, code);
    if (kWriteY) y[e] = m;
    if (indices) indices[e] = argmax_as<Arg>(at, code);
  }
}

// Tile rows a thread of the compiled-window gather takes (see the header comment).
constexpr int kGatherRows = 4;

// Compiled windows: one thread per (tile column m, kGatherRows tile rows) of a plane, i.e. the
// kStride x kStride input blocks whose top-left corner is (tr*kStride, m*kStride); blockDim.z
// planes a block (small planes). The windows covering those elements are rows
// tr0 - kCover + 1 .. tr0 + kGatherRows - 1 and columns m - kCover + 1 .. m: their argmax and dy
// are all loaded first (-1, never an offset or a code, outside the output). Whether window (i, j)
// covers element (a, b) of a tile is then a compile-time fact, so each element costs only the
// compares of the windows that do cover it (2.25 on average for 3/2), in row-major window order;
// so is the element's code in each of them. Arg: see argmax_as.
// kStaged (variant 2; a block that covers whole planes, see launch_gather): dx goes through shared
// memory and out as one contiguous run a block, a thread a float. Written straight, a warp's
// store covers every other float of 64 (the thread's two columns are two stores), so L2 takes
// twice the sector writes, each half masked (ncu: L2 87-89% busy with DRAM at 64%).
template <int kSize, int kStride, class Arg, bool kStaged>
__global__ void __launch_bounds__(kThreads) max_pool_gather_tiles_kernel(const PoolShape sh,
                                                                          const Arg* __restrict__ indices,
                                                                          const float* __restrict__ dy,
                                                                          float* __restrict__ dx) {
  constexpr int kCover = (kSize + kStride - 1) / kStride;  // windows covering an element, at most, each way
  constexpr int kWin = kGatherRows + kCover - 1;             // window rows a thread loads
  // the planes a block covers: at most 2 * blockDim.x columns by 2 * kGatherRows * blockDim.y rows
  __shared__ float staged[kStaged ? kThreads * kStride * kStride * kGatherRows : 1];
  const int h = (int)sh.h, w = (int)sh.w, p = (int)sh.p, q = (int)sh.q;
  const int tr0 = ((int)blockIdx.x * (int)blockDim.y + (int)threadIdx.y) * kGatherRows;
  const int64_t planes = sh.n * sh.c;
  // this thread's tiles of one plane, its dx (in global or shared memory) at dxp
  const auto gather_plane = [&](int64_t plane, float* __restrict__ dxp) {
    const Arg* ip = indices + plane * p * q;
    const float* dyp = dy + plane * p * q;
    for (int m = threadIdx.x; m * kStride < w; m += blockDim.x) {
      int32_t wi[kWin][kCover];
      float wd[kWin][kCover];
#pragma unroll
      for (int i = 0; i < kWin; ++i) {
        const int oh = tr0 - kCover + 1 + i;
#pragma unroll
        for (int j = 0; j < kCover; ++j) {
          const int ow = m - kCover + 1 + j;
          const bool in = oh >= 0 && oh < p && ow >= 0 && ow < q;
          const int o = in ? oh * q + ow : 0;
          wi[i][j] = in ? (int32_t)__ldg(ip + o) : -1;
          wd[i][j] = in ? __ldg(dyp + o) : 0.f;
        }
      }
#pragma unroll
      for (int t = 0; t < kGatherRows; ++t) {
#pragma unroll
        for (int a = 0; a < kStride; ++a) {
          const int ih = (tr0 + t) * kStride + a;
          if (ih >= h) break;
#pragma unroll
          for (int b = 0; b < kStride; ++b) {
            const int iw = m * kStride + b;
            if (iw >= w) break;
            const int self = ih * w + iw;
            float acc = 0.f;
            // window row tr0 + t - kCover + 1 + i covers input row ih when its last row reaches a
            // (its first is at or above ih); likewise the columns: compile-time conditions
#pragma unroll
            for (int i = 0; i < kCover; ++i) {
              if ((i - kCover + 1) * kStride + kSize - 1 < a) continue;
#pragma unroll
              for (int j = 0; j < kCover; ++j) {
                if ((j - kCover + 1) * kStride + kSize - 1 < b) continue;
                // the element's row and column in window (t + i, j): a + (kCover - 1 - i) * kStride, ...
                const int code = (a + (kCover - 1 - i) * kStride) * kSize + b + (kCover - 1 - j) * kStride;
                if (wi[t + i][j] == (sizeof(Arg) == 1 ? code : self)) acc += wd[t + i][j];
              }
            }
            dxp[self] = acc;
          }
        }
      }
    }
  };
  if constexpr (!kStaged) {
    if (tr0 * kStride >= h) return;  // no barrier in this kernel
    for (int64_t plane = (int64_t)blockIdx.y * blockDim.z + threadIdx.z; plane < planes;
         plane += (int64_t)gridDim.y * blockDim.z)
      gather_plane(plane, dx + plane * h * w);
  } else {
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    const int tid = ((int)threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    for (int64_t first = (int64_t)blockIdx.y * blockDim.z; first < planes; first += (int64_t)gridDim.y * blockDim.z) {
      if (first + threadIdx.z < planes && tr0 * kStride < h)
        gather_plane(first + threadIdx.z, staged + threadIdx.z * h * w);
      __syncthreads();
      const int count = (int)min((int64_t)blockDim.z, planes - first) * h * w;
      float* out = dx + first * h * w;
      for (int e = tid; e < count; e += threads) out[e] = staged[e];
      __syncthreads();  // the next planes overwrite `staged`
    }
  }
}

// Runtime windows: one thread per (input column iw, tile row), consecutive threads on consecutive
// columns; for each of the tile row's `stride` input rows, a plain loop over the covering
// windows in row-major order. Grid: x over groups of tile rows (blockDim.y a block), y over
// planes (looped past 65535).
__global__ void __launch_bounds__(kThreads) max_pool_gather_kernel(const PoolShape sh,
                                                                    const int32_t* __restrict__ indices,
                                                                    const float* __restrict__ dy,
                                                                    float* __restrict__ dx) {
  const int size = (int)sh.size, stride = (int)sh.stride;
  const int h = (int)sh.h, w = (int)sh.w, p = (int)sh.p, q = (int)sh.q;
  const int tiles_h = (h + stride - 1) / stride;
  const int tr = (int)blockIdx.x * (int)blockDim.y + (int)threadIdx.y;
  if (tr >= tiles_h) return;  // no barrier in this kernel
  const int64_t planes = sh.n * sh.c;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int32_t* ip = indices + plane * p * q;
    const float* dyp = dy + plane * p * q;
    float* dxp = dx + plane * h * w;
    for (int iw = threadIdx.x; iw < w; iw += blockDim.x) {
      // windows ow with ow*stride <= iw <= ow*stride + size - 1, inside the output
      const int ow_lo = iw >= size ? (iw - size) / stride + 1 : 0, ow_hi = min(iw / stride, q - 1);
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

}  // namespace

// A grid-stride index stays below total + gridDim.x * blockDim.x; keep that inside uint32_t.
bool fits_32(int64_t total) { return total + (int64_t)65535 * 8 * kThreads < ((int64_t)1 << 32); }

namespace {

bool paper_window(const PoolShape& sh) { return sh.size == 3 && sh.stride == 2; }

// The forward (kWriteY), or the argmax pass of the backward without indices; Arg: see argmax_as
// (uint8_t codes for the compiled window only: other windows launch nothing for them, and
// max_pool_backward never asks).
template <bool kWriteY, class Arg = int32_t>
void launch_max_pool(const PoolShape& sh, const float* x, float* y, Arg* indices) {
  const int64_t total = sh.n * sh.c * sh.p * sh.q;
  const unsigned blocks = blocks_for(total, kThreads);
  if (fits_32(total)) {
    if (paper_window(sh))
      max_pool_kernel<uint32_t, 3, 2, kWriteY, Arg><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
    else if constexpr (sizeof(Arg) == 4)
      max_pool_kernel<uint32_t, 0, 0, kWriteY><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
  } else {
    if (paper_window(sh))
      max_pool_kernel<int64_t, 3, 2, kWriteY, Arg><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
    else if constexpr (sizeof(Arg) == 4)
      max_pool_kernel<int64_t, 0, 0, kWriteY><<<blocks, kThreads, 0, stream()>>>(sh, x, y, indices);
  }
}

// The gathers' blocks, up to kThreads threads (at least 64 where the plane allows): blockDim.x
// the power of two from 8 to 128 that covers the columns a plane has for the kernel (tile
// columns for the compiled window, input columns otherwise; wider rows loop), blockDim.y the
// thread rows of a plane (rounded up to a power of two: a warp spans rows when x < 32) and, for
// the compiled window only, blockDim.z planes, so that small planes (13x13 has 7 tile columns
// and 2 thread rows) still fill the block.
struct GatherLaunch {
  dim3 grid, block;
};
GatherLaunch gather_launch(const PoolShape& sh, bool tiles) {
  const int64_t tiles_h = (sh.h + sh.stride - 1) / sh.stride;
  const int64_t columns = tiles ? (sh.w + sh.stride - 1) / sh.stride : sh.w;
  const int64_t thread_rows = tiles ? (tiles_h + kGatherRows - 1) / kGatherRows : tiles_h;
  const int64_t planes = sh.n * sh.c;
  int x = 8;
  while (x < 128 && x < columns) x *= 2;
  int y = 1;
  while (y < kThreads / x && (y < thread_rows || (!tiles && y * x < 64))) y *= 2;
  int z = 1;
  while (tiles && z * 2 * x * y <= kThreads && z < planes) z *= 2;
  const int64_t plane_blocks = (planes + z - 1) / z;
  return {dim3((unsigned)((thread_rows + y - 1) / y), (unsigned)std::min<int64_t>(plane_blocks, 65535)), dim3(x, y, z)};
}

// The gather from saved indices or from argmax scratch; Arg: see argmax_as. Variant 2 stages dx
// through shared memory where a block covers whole planes (one block of rows, every column).
template <class Arg>
void launch_gather(const PoolShape& sh, const Arg* indices, const float* dy, float* dx) {
  const bool tiles = paper_window(sh);
  const GatherLaunch l = gather_launch(sh, tiles);
  const bool staged = pool_variant() == 2 && l.grid.x == 1 && (int64_t)l.block.x * 2 >= sh.w;
  if (tiles && staged)
    max_pool_gather_tiles_kernel<3, 2, Arg, true><<<l.grid, l.block, 0, stream()>>>(sh, indices, dy, dx);
  else if (tiles)
    max_pool_gather_tiles_kernel<3, 2, Arg, false><<<l.grid, l.block, 0, stream()>>>(sh, indices, dy, dx);
  else if constexpr (sizeof(Arg) == 4)
    max_pool_gather_kernel<<<l.grid, l.block, 0, stream()>>>(sh, indices, dy, dx);
}

// The backward without indices: the argmax pass into scratch from the caching allocator, then the
// gather from it.
template <class Arg>
void backward_through_scratch(const PoolShape& sh, const float* x, const float* dy, float* dx) {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const size_t bytes = (size_t)(sh.n * sh.c * sh.p * sh.q) * sizeof(Arg);
  Arg* argmax = static_cast<Arg*>(gpu::allocate(device, bytes));
  launch_max_pool<false, Arg>(sh, x, nullptr, argmax);
  cudaError_t launched = cudaGetLastError();
  if (launched == cudaSuccess) {
    launch_gather<Arg>(sh, argmax, dy, dx);
    launched = cudaGetLastError();
  }
  gpu::deallocate(device, argmax, bytes);  // stream-ordered: reused only after these kernels
  CUDA_CHECK(launched);
}

}  // namespace

void max_pool(const PoolShape& sh, const float* x, float* y, int32_t* indices) {
  launch_max_pool<true>(sh, x, y, indices);
  CUDA_CHECK_LAUNCH("max_pool_kernel");
}

void max_pool_backward_indices(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx,
                               int64_t* invalid) {
  *invalid = 0;  // not checked here: it would need a sync; a bad index gets no gradient
  launch_gather<int32_t>(sh, indices, dy, dx);
  CUDA_CHECK_LAUNCH("max_pool gather kernel");
}

// Without saved indices. y is not read: the argmax is recomputed from x (the same as the first
// element equal to y, for y = max_pool(x)). Variants 1 and 2 keep it as one-byte codes (compiled
// window only).
void max_pool_backward(const PoolShape& sh, const float* x, const float* /*y*/, const float* dy, float* dx) {
  if (paper_window(sh) && pool_variant() != 0)
    backward_through_scratch<uint8_t>(sh, x, dy, dx);
  else
    backward_through_scratch<int32_t>(sh, x, dy, dx);
}

}  // namespace convnet::cuda
