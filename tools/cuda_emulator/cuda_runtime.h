// The CUDA emulator's stand-in for <cuda_runtime.h>: just the part of the runtime API and of the
// kernel language that csrc/ uses, implemented on the CPU (runtime.cpp), so that the whole CUDA
// backend -- host code and kernels -- builds with g++ and runs its tests on a machine without a GPU.
//
// How kernels run: tools/cuda_emulator/rewrite_launches.py turns `k<<<grid, block, smem, s>>>(args)`
// into `::emu::launch(::emu::Config(grid, block, smem, s), [&] { k(args); })`. launch() runs the
// blocks one after another on the calling thread; within a block every CUDA thread is a fiber
// (its own stack), switched only at __syncthreads, __syncthreads_count and warp shuffles, so
// barriers and shuffles have their CUDA meaning, and a barrier some threads never reach is
// reported as an error rather than hanging. __shared__ variables are per host thread statics:
// one block runs at a time on a host thread. Launch limits (1024 threads, grid.y/z 65535) are
// checked as the driver checks them.
//
// The rewritten sources are built with -fsanitize=alignment,bounds (CMakeLists.txt), so a float4
// access off 16 bytes (a fault on a GPU) and an index past a fixed-size array (shared memory) stop
// the process with the file and line.
//
// Device memory sits between guard pages (runtime.cpp): with CONVNET_NO_MEMORY_CACHING=1, each
// tensor its own allocation, an access past a tensor stops the process and names the buffer.
//
// What it cannot see: timing, memory races between blocks (blocks run one at a time: in order,
// last first or shuffled, CONVNET_EMU_ORDER), device memory read from host code (both are host
// memory here), and warp-synchronous code without _sync.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

// ---- kernel language ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(4))) uchar4 {
  unsigned char x, y, z, w;
};

template <class T>
inline T __ldg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
using std::isfinite;
using std::max;
using std::min;

namespace emu {
void sync_block();               // every live thread of the block arrives
int sync_block_count(int pred);  // ... and the number that passed a nonzero predicate
uint64_t shuffle_xor(uint64_t bits, int lane_mask, int width);
}  // namespace emu

inline void __syncthreads() { emu::sync_block(); }
inline int __syncthreads_count(int predicate) { return emu::sync_block_count(predicate); }
template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type over 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof v);
  bits = emu::shuffle_xor(bits, lane_mask, width);
  T r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}
// Integer atomics only (the one csrc/ uses counts non-finite values); host threads may run
// kernels at once, so they are real atomics.
template <class T>
inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

// ---- runtime API ----
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorPeerAccessAlreadyEnabled = 704,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
};
struct CUstream_st;
struct CUevent_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaEventDisableTiming 0x02

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount;
};

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceCanAccessPeer(int* can, int from, int to);
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned flags);
cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t e);

cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t n);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s = nullptr);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_dev, const void* src, int src_dev, size_t n,
                                cudaStream_t s = nullptr);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventDestroy(cudaEvent_t e);

// Blocks a kernel of this many threads can keep on one SM: a fixed 2 (the emulator has no SMs).
template <class K>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, K, int, size_t) {
  *blocks = 2;
  return cudaSuccess;
}

// ---- launches (see rewrite_launches.py) ----
namespace emu {
struct Config {
  dim3 grid, block;
  size_t shared_bytes;
  Config(dim3 g, dim3 b, size_t smem = 0, cudaStream_t = nullptr) : grid(g), block(b), shared_bytes(smem) {}
};
// Runs body once per CUDA thread of the grid; a bad configuration is left as the sticky error
// cudaGetLastError returns, as after a real launch.
void launch(const Config& c, const std::function<void()>& body);
}  // namespace emu
