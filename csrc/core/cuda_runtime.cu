// The CUDA side of csrc/core: device queries, the caching allocator, copies.
// Compiled only when the CUDA backend is built.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <map>
#include <mutex>
#include <vector>

#include "../cuda/common.cuh"
#include "block_cache.h"
#include "device.h"

namespace convnet {

bool cuda_built() { return true; }

int cuda_device_count() {
  static int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      n = 0;
    }
    return n;
  }();
  return count;
}

std::string cuda_device_name(int index) {
  cudaDeviceProp p;
  CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  return p.name;
}

bool cuda_peer_access(int from, int to) {
  if (from == to) return true;
  int can = 0;
  CUDA_CHECK(cudaDeviceCanAccessPeer(&can, from, to));
  return can != 0;
}

namespace {
// Peer access is enabled once per ordered pair, the first time a copy needs it.
bool enable_peer(int from, int to) {
  static std::mutex m;
  static std::map<std::pair<int, int>, bool> done;
  std::lock_guard<std::mutex> lock(m);
  auto key = std::make_pair(from, to);
  auto it = done.find(key);
  if (it != done.end()) return it->second;
  bool ok = cuda_peer_access(from, to);
  if (ok) {
    DeviceGuard g(Device{DeviceType::CUDA, from});
    cudaError_t e = cudaDeviceEnablePeerAccess(to, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();
    else if (e != cudaSuccess) { cudaGetLastError(); ok = false; }
  }
  done[key] = ok;
  return ok;
}
}  // namespace

DeviceGuard::DeviceGuard(Device d) {
  if (!d.is_cuda()) return;
  CUDA_CHECK(cudaGetDevice(&previous));
  if (previous != d.index) CUDA_CHECK(cudaSetDevice(d.index));
}

DeviceGuard::~DeviceGuard() {
  int cur = -1;
  if (previous >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != previous) cudaSetDevice(previous);
}

void synchronize(Device d) {
  if (!d.is_cuda()) return;
  DeviceGuard g(d);
  CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
}

namespace gpu {
namespace {

struct Block {
  void* ptr;
  cudaEvent_t freed;   // GPU: recorded on the freeing thread's stream; pinned host: the last async copy (or null)
  uint64_t owner = 0;  // GPU: the freeing thread's serial (its per-thread stream needs no wait to reuse the block)
};

// A number for the calling thread, never given to another: std::thread::id may be reused by a new
// thread, whose per-thread stream is new too, while the old thread's queued work still reads a block.
uint64_t thread_serial() {
  static std::atomic<uint64_t> next{1};
  thread_local const uint64_t mine = next++;
  return mine;
}

// Size classes: multiples of 512 bytes up to 1 MiB, then multiples of 2 MiB, so a
// training loop that allocates the same shapes each step hits the cache every time.
size_t round_size(size_t n) {
  if (n <= (1u << 20)) return (n + 511) / 512 * 512;
  return (n + (2u << 20) - 1) / (2u << 20) * (2u << 20);
}

struct Pool : BlockCache<Block> {
  std::vector<cudaEvent_t> spare_events;  // GPU: recorded again at the next free (creating one costs more)
  size_t allocated = 0;
};

// The devices' pools, made at a device's first allocation; never freed: must outlive tensors
// destroyed at exit. create false: nullptr for a device never allocated on.
Pool* find_pool(int device, bool create) {
  static std::mutex m;
  static std::map<int, Pool*> pools;
  std::lock_guard<std::mutex> lock(m);
  auto it = pools.find(device);
  if (it != pools.end()) return it->second;
  return create ? (pools[device] = new Pool()) : nullptr;
}

Pool& pool(int device) { return *find_pool(device, true); }

void release_cached(int device, Pool& p) {  // caller holds p.m
  DeviceGuard g(Device{DeviceType::CUDA, device});
  p.drain([](const Block& b) {
    cudaEventSynchronize(b.freed);
    cudaEventDestroy(b.freed);
    cudaFree(b.ptr);
  });
  for (cudaEvent_t e : p.spare_events) cudaEventDestroy(e);
  p.spare_events.clear();
}

// Pinned host blocks: one cache for the process, by size class, as for the GPU blocks.
Pool& pinned_pool() {
  static Pool* p = new Pool();  // never freed: must outlive tensors destroyed at exit
  return *p;
}

void release_pinned_cache() {
  Pool& p = pinned_pool();
  std::lock_guard<std::mutex> lock(p.m);
  p.drain([](const Block& b) {
    if (b.freed) {
      cudaEventSynchronize(b.freed);
      cudaEventDestroy(b.freed);
    }
    cudaFreeHost(b.ptr);
  });
}

// CONVNET_NO_MEMORY_CACHING=1: each GPU block is a cudaMalloc of the tensor's exact size, freed at
// once (slow), so that compute-sanitizer and the CUDA emulator's guard pages see an access past a
// tensor, which a cached block's rounding would hide.
bool no_caching() {
  static const bool yes = [] {
    const char* v = std::getenv("CONVNET_NO_MEMORY_CACHING");
    return v && std::string(v) == "1";
  }();
  return yes;
}

[[noreturn]] void out_of_memory(int device, size_t nbytes, size_t in_use) {
  cudaGetLastError();
  throw DeviceError(detail::message("out of GPU memory on cuda:", device, " allocating ", nbytes, " bytes (",
                                    in_use, " bytes in use)"));
}

}  // namespace

void* allocate(int device, size_t nbytes) {
  OpScope scope(current_op());
  Pool& p = pool(device);
  DeviceGuard g(Device{DeviceType::CUDA, device});
  if (no_caching()) {
    void* ptr = nullptr;
    const cudaError_t e = cudaMalloc(&ptr, nbytes ? nbytes : 1);
    if (e == cudaErrorMemoryAllocation) out_of_memory(device, nbytes, p.allocated);
    CUDA_CHECK(e);
    std::lock_guard<std::mutex> lock(p.m);
    p.allocated += nbytes;
    return ptr;
  }
  size_t size = round_size(nbytes);
  {
    std::lock_guard<std::mutex> lock(p.m);
    // A block this thread freed first: its stream is ours, so stream order alone makes it safe.
    const uint64_t me = thread_serial();
    Block b{};
    if (p.take(size, b, [me](const Block& x) { return x.owner == me; })) {
      // Work queued on another thread's stream may still read the block: wait for it on ours.
      const cudaError_t waited = b.owner == me ? cudaSuccess : cudaStreamWaitEvent(cuda::stream(), b.freed, 0);
      if (waited != cudaSuccess) {
        p.put(size, b);  // back in the cache, still behind its event
        CUDA_CHECK(waited);
      }
      p.allocated += size;
      p.spare_events.push_back(b.freed);  // the wait is queued: the event may be recorded again
      return b.ptr;
    }
  }
  void* ptr = nullptr;
  cudaError_t e = cudaMalloc(&ptr, size);
  if (e == cudaErrorMemoryAllocation) {  // give the cache back and try once more
    cudaGetLastError();
    std::lock_guard<std::mutex> lock(p.m);
    release_cached(device, p);
    e = cudaMalloc(&ptr, size);
  }
  if (e == cudaErrorMemoryAllocation) out_of_memory(device, nbytes, p.allocated);
  CUDA_CHECK(e);
  std::lock_guard<std::mutex> lock(p.m);
  p.allocated += size;
  return ptr;
}

void deallocate(int device, void* ptr, size_t nbytes) {
  // Runs from destructors: never throws; errors here are reported by the next op.
  size_t size = round_size(nbytes);
  Pool& p = pool(device);
  int prev = -1;
  cudaGetDevice(&prev);
  if (prev != device) cudaSetDevice(device);
  if (no_caching()) {  // cudaFree waits for the work queued on the device
    cudaFree(ptr);
    std::lock_guard<std::mutex> lock(p.m);
    p.allocated -= nbytes;
    if (prev >= 0 && prev != device) cudaSetDevice(prev);
    return;
  }
  Block b{ptr, nullptr, thread_serial()};
  {
    std::lock_guard<std::mutex> lock(p.m);
    if (!p.spare_events.empty()) {
      b.freed = p.spare_events.back();
      p.spare_events.pop_back();
    }
  }
  bool ok = (b.freed || cudaEventCreateWithFlags(&b.freed, cudaEventDisableTiming) == cudaSuccess) &&
            cudaEventRecord(b.freed, cuda::stream()) == cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(p.m);
    p.allocated -= size;
    if (ok) {
      p.put(size, b);
    } else {
      cudaGetLastError();
      if (b.freed) cudaEventDestroy(b.freed);
      cudaFree(ptr);
    }
  }
  if (prev >= 0 && prev != device) cudaSetDevice(prev);
}

void empty_cache() {
  for (int d = 0; d < cuda_device_count(); ++d) {
    Pool* p = find_pool(d, false);  // a GPU never used is left alone (no context made on it)
    if (!p) continue;
    std::lock_guard<std::mutex> lock(p->m);
    release_cached(d, *p);
  }
  release_pinned_cache();
}

size_t cached_bytes(int device) { Pool& p = pool(device); std::lock_guard<std::mutex> l(p.m); return p.cached; }
size_t allocated_bytes(int device) { Pool& p = pool(device); std::lock_guard<std::mutex> l(p.m); return p.allocated; }

void memset(int device, void* ptr, int value, size_t nbytes) {
  DeviceGuard g(Device{DeviceType::CUDA, device});
  CUDA_CHECK(cudaMemsetAsync(ptr, value, nbytes, cuda::stream()));
}

void copy(void* dst, int dst_dev, const void* src, int src_dev, size_t nbytes) {
  if (nbytes == 0) return;
  if (src_dev < 0 && dst_dev < 0) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  if (src_dev < 0 || dst_dev < 0) {  // host <-> device: synchronous on this thread's stream
    int dev = src_dev < 0 ? dst_dev : src_dev;
    DeviceGuard g(Device{DeviceType::CUDA, dev});
    auto kind = src_dev < 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kind, cuda::stream()));
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    return;
  }
  if (src_dev == dst_dev) {
    DeviceGuard g(Device{DeviceType::CUDA, dst_dev});
    CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, cuda::stream()));
    return;
  }
  copy_between_gpus(dst, dst_dev, src, src_dev, nbytes, GpuCopyPath::automatic);
}

void copy_between_gpus(void* dst, int dst_dev, const void* src, int src_dev, size_t nbytes, GpuCopyPath path) {
  if (nbytes == 0) return;
  // The source's producer may be another thread's stream: finish this thread's work on the
  // source device first, then copy.
  {
    DeviceGuard g(Device{DeviceType::CUDA, src_dev});
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  }
  DeviceGuard g(Device{DeviceType::CUDA, dst_dev});
  static const bool p2p_allowed = [] {
    const char* v = std::getenv("CONVNET_P2P");
    return !(v && std::string(v) == "0");
  }();
  bool peer = path == GpuCopyPath::peer ||
              (path == GpuCopyPath::automatic && p2p_allowed && (dst_dev == src_dev || enable_peer(dst_dev, src_dev)));
  if (peer) {  // cudaMemcpyPeerAsync also works between devices without peer access (the driver stages it)
    CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_dev, src, src_dev, nbytes, cuda::stream()));
    if (dst_dev != src_dev) {
      // The copy runs on the destination's stream, unordered with the source device's work: this
      // thread's source stream waits for it, so a later free of the source (its event is recorded
      // there) or this thread's reuse of the block comes after the copy has read it.
      cudaEvent_t copied;
      CUDA_CHECK(cudaEventCreateWithFlags(&copied, cudaEventDisableTiming));
      cudaError_t e = cudaEventRecord(copied, cuda::stream());
      try {
        DeviceGuard gs(Device{DeviceType::CUDA, src_dev});
        if (e == cudaSuccess) e = cudaStreamWaitEvent(cuda::stream(), copied, 0);
      } catch (...) {
        cudaEventDestroy(copied);
        throw;
      }
      cudaEventDestroy(copied);  // its resources go once it has completed
      CUDA_CHECK(e);
    }
    return;
  }
  // No peer access: stage through pinned host memory, synchronously.
  void* host = allocate_pinned(nbytes);
  try {
    {
      DeviceGuard gs(Device{DeviceType::CUDA, src_dev});
      CUDA_CHECK(cudaMemcpyAsync(host, src, nbytes, cudaMemcpyDeviceToHost, cuda::stream()));
      CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
    }
    CUDA_CHECK(cudaMemcpyAsync(dst, host, nbytes, cudaMemcpyHostToDevice, cuda::stream()));
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  } catch (...) {
    deallocate_pinned(host, nbytes, nullptr);
    throw;
  }
  deallocate_pinned(host, nbytes, nullptr);
}

void* allocate_pinned(size_t nbytes) {
  OpScope scope(current_op());
  size_t size = round_size(nbytes);
  Pool& p = pinned_pool();
  Block b{nullptr, nullptr};
  {
    std::lock_guard<std::mutex> lock(p.m);
    if (p.take(size, b)) p.allocated += size;
  }
  if (b.ptr) {
    if (b.freed) {  // the host writes into it next: wait for the last copy that read it
      cudaError_t e = cudaEventSynchronize(b.freed);
      cudaEventDestroy(b.freed);
      if (e != cudaSuccess) {
        deallocate_pinned(b.ptr, nbytes, nullptr);
        CUDA_CHECK(e);
      }
    }
    return b.ptr;
  }
  void* ptr = nullptr;
  cudaError_t e = cudaMallocHost(&ptr, size);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw DeviceError(detail::message("cannot allocate ", nbytes, " bytes of pinned host memory: ",
                                      cudaGetErrorString(e)));
  }
  std::lock_guard<std::mutex> lock(p.m);
  p.allocated += size;
  return ptr;
}

void deallocate_pinned(void* ptr, size_t nbytes, void* event) {
  // Runs from destructors: never throws. The block keeps its event; allocate_pinned waits on it.
  size_t size = round_size(nbytes);
  Pool& p = pinned_pool();
  std::lock_guard<std::mutex> lock(p.m);
  p.allocated -= size;
  p.put(size, Block{ptr, static_cast<cudaEvent_t>(event)});
}

void copy_host_to_device_async(void* dst, int dst_dev, const void* src, size_t nbytes, void** event) {
  // Two threads copying one pinned tensor at once would both wait on, and both destroy, its last
  // event: one lock for every pinned tensor's event (held only while a copy is queued).
  static std::mutex event_mutex;
  std::lock_guard<std::mutex> lock(event_mutex);
  DeviceGuard g(Device{DeviceType::CUDA, dst_dev});
  cudaEvent_t previous = static_cast<cudaEvent_t>(*event);
  if (previous) {  // an earlier copy from this block (maybe another device or thread): order after it
    CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), previous, 0));
    CUDA_CHECK(cudaEventDestroy(previous));  // released once it has completed
    *event = nullptr;
  }
  CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, cuda::stream()));
  cudaEvent_t done;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  cudaError_t e = cudaEventRecord(done, cuda::stream());
  if (e != cudaSuccess) {
    cudaEventDestroy(done);
    CUDA_CHECK(e);
  }
  *event = done;
}

namespace {
__global__ void count_nonfinite_kernel(const float* __restrict__ p, long long n, unsigned long long* out) {
  unsigned long long local = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    local += !isfinite(p[i]);
  // Integer atomics: the count is exact and deterministic whatever the order.
  if (local) atomicAdd(out, local);
}
}  // namespace

int64_t count_nonfinite(int device, const float* p, int64_t n) {
  if (n == 0) return 0;
  DeviceGuard g(Device{DeviceType::CUDA, device});
  unsigned long long* d = static_cast<unsigned long long*>(allocate(device, sizeof(unsigned long long)));
  unsigned long long h = 0;
  try {
    CUDA_CHECK(cudaMemsetAsync(d, 0, sizeof(h), cuda::stream()));
    count_nonfinite_kernel<<<cuda::blocks_for(n, 256, 1024), 256, 0, cuda::stream()>>>(p, n, d);
    CUDA_CHECK_LAUNCH("count_nonfinite");
    CUDA_CHECK(cudaMemcpyAsync(&h, d, sizeof(h), cudaMemcpyDeviceToHost, cuda::stream()));
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  } catch (...) {
    deallocate(device, d, sizeof(h));
    throw;
  }
  deallocate(device, d, sizeof(h));
  return (int64_t)h;
}

}  // namespace gpu
}  // namespace convnet
