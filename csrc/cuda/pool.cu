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
//   max_pool_kernel (y and indices / argmax only)  <u32,3,2> 31 / 29   <u32,0,0> 26 / 24   <i64,*> <= 31
//   max_pool_gather_tiles_kernel <3,2> 60   max_pool_gather_kernel (runtime window) 40
//   max_pool_planes_kernel (variant 1) <3,2> forward / from x / from indices 36 / 37 / 40,
//   runtime window 35 / 38 / 48
// Timed on an H200 (results 2026-11-26-h200-29eff7f): forward 0.74-0.82 of copy.
//
// Variant 1 (CONVNET_POOL_VARIANT=1, max_pool_planes_kernel below; the default stays 0 until
// measured): whole planes a block through shared memory, every global access a contiguous run,
// and the backward without indices in one pass (no argmax scratch: 333 of the 404 MB that two
// passes move at 55->27, batch 128). Written without a GPU; checked by tools/emulate_lrn_pool.py.
// Prediction (H200): backward without indices 55->27 from 126 us to 90-100 us (0.72 -> 0.85-0.9
// of copy), 27->13 0.67 -> ~0.85, 13->6 (two ~15 us launches now) 0.51 -> ~0.7; from indices and
// the forward on 13x13 planes (warps now spread over several planes and two-column writes)
// 0.57 / 0.77 -> 0.7-0.8, the larger planes about as now. Refuted where bench_pool.py's "v1" rows
// are no faster than the "v0" rows of the same run.
#include <algorithm>

#include "../core/device.h"
#include "../kernels/pool.h"
#include "common.cuh"

namespace convnet::cuda {
namespace {

constexpr int kThreads = 256;

// The size x size window at offset `corner` of plane xp (row length w), scanned in row-major
// order with pool_better: its maximum m and the offset `at` of its first maximal element. kLdg:
// through the read-only cache (x in global memory). With the size a compile-time constant the
// loops unroll and every load is issued before the first compare.
template <bool kLdg>
__device__ __forceinline__ void window_max(const float* __restrict__ xp, int corner, int w, int size, float& m,
                                           int& at) {
  m = kLdg ? __ldg(xp + corner) : xp[corner];
  at = corner;
#pragma unroll
  for (int kh = 0; kh < size; ++kh) {
#pragma unroll
    for (int kw = 0; kw < size; ++kw) {
      const int o = corner + kh * w + kw;
      const float v = kLdg ? __ldg(xp + o) : xp[o];
      const bool take = pool_better(v, m);
      m = take ? v : m;
      at = take ? o : at;
    }
  }
}

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
    float m;
    int at;
    window_max<true>(x + (int64_t)plane * hw, (int)oh * stride * w + (int)ow * stride, w, size, m, at);
    if (kWriteY) y[e] = m;
    if (indices) indices[e] = at;
  }
}

// Tile rows a thread of the compiled-window gather takes (see the header comment).
constexpr int kGatherRows = 4;

// Compiled windows: one thread per (tile column m, kGatherRows tile rows) of a plane, i.e. the
// kStride x kStride input blocks whose top-left corner is (tr*kStride, m*kStride); blockDim.z
// planes a block (small planes). The windows covering those elements are rows
// tr0 - kCover + 1 .. tr0 + kGatherRows - 1 and columns m - kCover + 1 .. m: their indices and dy
// are all loaded first (-1, never an offset, outside the output). Whether window (i, j) covers
// element (a, b) of a tile is then a compile-time fact, so each element costs only the compares
// of the windows that do cover it (2.25 on average for 3/2), in row-major window order.
template <int kSize, int kStride>
__global__ void __launch_bounds__(kThreads) max_pool_gather_tiles_kernel(const PoolShape sh,
                                                                          const int32_t* __restrict__ indices,
                                                                          const float* __restrict__ dy,
                                                                          float* __restrict__ dx) {
  constexpr int kCover = (kSize + kStride - 1) / kStride;  // windows covering an element, at most, each way
  constexpr int kWin = kGatherRows + kCover - 1;             // window rows a thread loads
  const int h = (int)sh.h, w = (int)sh.w, p = (int)sh.p, q = (int)sh.q;
  const int tr0 = ((int)blockIdx.x * (int)blockDim.y + (int)threadIdx.y) * kGatherRows;
  if (tr0 * kStride >= h) return;  // no barrier in this kernel
  const int64_t planes = sh.n * sh.c;
  for (int64_t plane = (int64_t)blockIdx.y * blockDim.z + threadIdx.z; plane < planes;
       plane += (int64_t)gridDim.y * blockDim.z) {
    const int32_t* ip = indices + plane * p * q;
    const float* dyp = dy + plane * p * q;
    float* dxp = dx + plane * h * w;
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
          wi[i][j] = in ? __ldg(ip + o) : -1;
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
                if (wi[t + i][j] == self) acc += wd[t + i][j];
              }
            }
            dxp[self] = acc;
          }
        }
      }
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

// ---- variant 1 (CONVNET_POOL_VARIANT=1): whole planes a block, through shared memory ----
// A block takes `per_block` consecutive planes, which lie back to back in every tensor, so it
// reads x, dy and saved indices and writes y, indices and dx as contiguous runs, a thread an
// element (coalesced; partial lines only at a run's two ends), where the kernels above read x in
// stride-2 patterns and write dx two columns a thread. Shared memory holds the planes of x
// (forward, backward without indices), and each window's dy and argmax offset (backward). The
// steps, a barrier after each:
//   load: x and/or the windows' dy and saved indices;
//   scan (forward, backward without indices): each window's maximum and argmax from shared x, in
//     row-major order with pool_better (the same bits as max_pool_kernel); the forward writes y
//     and indices, the backward keeps the argmax in shared memory (no scratch tensor, no second
//     launch);
//   gather (backward): each input element adds the dy of the covering windows whose argmax it is,
//     in row-major window order (as the gathers above and the CPU scatter: the same bits); a saved
//     index outside its window is matched by no element, so its dy is dropped.
enum class PlanesStep { forward, from_x, from_indices };

// count elements of src into shared dst, a block's threads striding, kStageBatch loads issued
// before their stores (a plain loop keeps one load in flight a thread: PTX loads, then stores,
// one element an iteration).
constexpr int kStageBatch = 8;
template <class T>
__device__ __forceinline__ void stage_in(T* dst, const T* __restrict__ src, int count) {
  for (int base = threadIdx.x; base < count; base += kStageBatch * blockDim.x) {
    T v[kStageBatch];
#pragma unroll
    for (int u = 0; u < kStageBatch; ++u) {
      const int e = base + u * (int)blockDim.x;
      if (e < count) v[u] = __ldg(src + e);
    }
#pragma unroll
    for (int u = 0; u < kStageBatch; ++u) {
      const int e = base + u * (int)blockDim.x;
      if (e < count) dst[e] = v[u];
    }
  }
}

struct PlaneBlocks {
  int per_block;                // planes a block
  FastDiv plane_in, row_in;     // by h * w and by w: an input element's plane and row
  FastDiv plane_out, row_out;   // by p * q and by q: a window's plane and row
};

template <int kSize, int kStride, PlanesStep kStep>
__global__ void __launch_bounds__(kThreads) max_pool_planes_kernel(
    const PoolShape sh, const PlaneBlocks pb, const float* __restrict__ x, const int32_t* __restrict__ saved,
    const float* __restrict__ dy, float* __restrict__ y, int32_t* __restrict__ indices, float* __restrict__ dx) {
  extern __shared__ float planes_shared[];
  constexpr bool kScan = kStep != PlanesStep::from_indices, kGather = kStep != PlanesStep::forward;
  const int size = kSize ? kSize : (int)sh.size, stride = kStride ? kStride : (int)sh.stride;
  // windows covering an element, at most, each way (compile-time for the paper's window)
  const int cover = kSize ? (kSize + kStride - 1) / kStride : (size + stride - 1) / stride;
  const int h = (int)sh.h, w = (int)sh.w, p = (int)sh.p, q = (int)sh.q, hw = h * w, pq = p * q;
  const int64_t planes = sh.n * sh.c;
  // shared: [x of the planes (kScan)] [the windows' dy] [the windows' argmax] (kGather)
  float* xs = planes_shared;
  float* wdy = planes_shared + (kScan ? pb.per_block * hw : 0);
  int32_t* warg = reinterpret_cast<int32_t*>(wdy + (kGather ? pb.per_block * pq : 0));
  for (int64_t first = (int64_t)blockIdx.x * pb.per_block; first < planes;
       first += (int64_t)gridDim.x * pb.per_block) {
    const int k = (int)min((int64_t)pb.per_block, planes - first);
    const int inputs = k * hw, windows = k * pq;
    if (kScan) stage_in(xs, x + first * hw, inputs);
    if (kGather) stage_in(wdy, dy + first * pq, windows);
    if (kStep == PlanesStep::from_indices) stage_in(warg, saved + first * pq, windows);
    __syncthreads();
    if (kScan) {
      for (int i = threadIdx.x; i < windows; i += blockDim.x) {
        const int j = pb.plane_out.div(i), o = i - j * pq, oh = pb.row_out.div(o), ow = o - oh * q;
        float m;
        int at;
        window_max<false>(xs + j * hw, oh * stride * w + ow * stride, w, size, m, at);
        if (kStep == PlanesStep::forward) {
          y[first * pq + i] = m;
          if (indices) indices[first * pq + i] = at;
        } else {
          warg[i] = at;
        }
      }
      if (kGather) __syncthreads();
    }
    if (kGather) {
      for (int e = threadIdx.x; e < inputs; e += blockDim.x) {
        const int j = pb.plane_in.div(e), r = e - j * hw, ih = pb.row_in.div(r), iw = r - ih * w;
        // windows oh with oh*stride <= ih <= oh*stride + size - 1, inside the output; likewise ow
        const int oh_lo = ih >= size ? (ih - size) / stride + 1 : 0, oh_hi = min(ih / stride, p - 1);
        const int ow_lo = iw >= size ? (iw - size) / stride + 1 : 0, ow_hi = min(iw / stride, q - 1);
        const int32_t* wa = warg + j * pq;
        const float* wd = wdy + j * pq;
        float acc = 0.f;
#pragma unroll
        for (int a = cover - 1; a >= 0; --a) {  // ascending oh: row-major window order
          const int oh = oh_hi - a;
          if (oh < oh_lo) continue;
#pragma unroll
          for (int b = cover - 1; b >= 0; --b) {
            const int ow = ow_hi - b;
            if (ow < ow_lo) continue;
            if (wa[oh * q + ow] == r) acc += wd[oh * q + ow];
          }
        }
        dx[first * hw + e] = acc;
      }
    }
    __syncthreads();  // the next planes overwrite the shared arrays
  }
}

// Variant 1's launch for one step: about kPlanesElements input elements a block (at least one
// plane), within kPlanesSharedBytes of shared memory (the limit without opting in to more);
// blocks 0 where one plane's shared arrays pass that. (Host code; the emulator calls it too.)
constexpr int64_t kPlanesElements = 2048;
constexpr int64_t kPlanesSharedBytes = 48 * 1024;

struct PlanesLaunch {
  PlaneBlocks pb;
  int64_t blocks;  // to cover every plane once
  size_t shared;   // bytes of dynamic shared memory
};

template <PlanesStep kStep>
PlanesLaunch planes_launch(const PoolShape& sh) {
  const int64_t hw = sh.h * sh.w, pq = sh.p * sh.q;
  const int64_t plane_bytes = (int64_t)sizeof(float) * ((kStep != PlanesStep::from_indices ? hw : 0) +
                                                        (kStep != PlanesStep::forward ? 2 * pq : 0));
  if (plane_bytes > kPlanesSharedBytes) return PlanesLaunch{PlaneBlocks{}, 0, 0};
  const int64_t per_block = std::max<int64_t>(1, std::min(kPlanesElements / hw, kPlanesSharedBytes / plane_bytes));
  return PlanesLaunch{PlaneBlocks{(int)per_block, FastDiv(hw), FastDiv(sh.w), FastDiv(pq), FastDiv(sh.q)},
                      (sh.n * sh.c + per_block - 1) / per_block, (size_t)(per_block * plane_bytes)};
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

// Variant 1's kernel for one step; false, with nothing launched, under variant 0 or where one
// plane's shared arrays pass kPlanesSharedBytes (variant 0's kernels then run).
template <PlanesStep kStep>
bool launch_planes(const PoolShape& sh, const float* x, const int32_t* saved, const float* dy, float* y,
                   int32_t* indices, float* dx) {
  if (pool_variant() != 1) return false;
  const PlanesLaunch l = planes_launch<kStep>(sh);
  if (l.blocks == 0) return false;
  const unsigned blocks = blocks_for(l.blocks, 1);
  if (paper_window(sh))
    max_pool_planes_kernel<3, 2, kStep>
        <<<blocks, kThreads, l.shared, stream()>>>(sh, l.pb, x, saved, dy, y, indices, dx);
  else
    max_pool_planes_kernel<0, 0, kStep>
        <<<blocks, kThreads, l.shared, stream()>>>(sh, l.pb, x, saved, dy, y, indices, dx);
  CUDA_CHECK_LAUNCH("max_pool_planes_kernel");
  return true;
}

void launch_gather(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx) {
  const bool tiles = paper_window(sh);
  const GatherLaunch l = gather_launch(sh, tiles);
  if (tiles)
    max_pool_gather_tiles_kernel<3, 2><<<l.grid, l.block, 0, stream()>>>(sh, indices, dy, dx);
  else
    max_pool_gather_kernel<<<l.grid, l.block, 0, stream()>>>(sh, indices, dy, dx);
}

}  // namespace

void max_pool(const PoolShape& sh, const float* x, float* y, int32_t* indices) {
  if (launch_planes<PlanesStep::forward>(sh, x, nullptr, nullptr, y, indices, nullptr)) return;
  launch_max_pool<true>(sh, x, y, indices);
  CUDA_CHECK_LAUNCH("max_pool_kernel");
}

void max_pool_backward_indices(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx,
                               int64_t* invalid) {
  *invalid = 0;  // not checked here: it would need a sync; a bad index gets no gradient
  if (launch_planes<PlanesStep::from_indices>(sh, nullptr, indices, dy, nullptr, nullptr, dx)) return;
  launch_gather(sh, indices, dy, dx);
  CUDA_CHECK_LAUNCH("max_pool gather kernel");
}

// Without saved indices: the argmax into scratch, then the gather. y is not read: the argmax is
// recomputed from x (the same as the first element equal to y, for y = max_pool(x)).
void max_pool_backward(const PoolShape& sh, const float* x, const float* /*y*/, const float* dy, float* dx) {
  if (launch_planes<PlanesStep::from_x>(sh, x, nullptr, dy, nullptr, nullptr, dx)) return;
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
