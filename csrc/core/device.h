// Devices: how many GPUs, the current device guard, synchronisation, peer access,
// and the CUDA caching allocator. Everything that touches the CUDA runtime outside
// a kernel file lives behind these functions (implemented in cuda_runtime.cu), so
// that the CPU-only build compiles none of it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor.h"

namespace convnet {

bool cuda_built();       // was the CUDA backend compiled in?
int cuda_device_count(); // 0 when not built or no GPU (never throws)
std::string cuda_device_name(int index);
bool cuda_peer_access(int from, int to);  // can `from` read `to`'s memory directly?
void synchronize(Device d);               // wait for this thread's work on d

// Sets the current CUDA device for the scope; a no-op for the CPU.
struct DeviceGuard {
  explicit DeviceGuard(Device d);
  ~DeviceGuard();
  int previous = -1;
};

namespace host {
// CPU tensor memory, 64-byte aligned (csrc/core/host_memory.cpp): blocks of 1 MiB and more are
// cached by size and reused, as the GPU's are; smaller ones come from the C library.
void* allocate(size_t nbytes);
void deallocate(void* p, size_t nbytes);
void empty_cache();
size_t cached_bytes();
}  // namespace host

namespace gpu {
// Caching allocator: blocks are kept per device and size class and reused. The freeing
// thread gets its own blocks back first, with no wait (same per-thread stream: stream order
// protects them); another thread's stream waits for the event recorded at free time.
void* allocate(int device, size_t nbytes);
void deallocate(int device, void* p, size_t nbytes);
void empty_cache();
size_t cached_bytes(int device);
size_t allocated_bytes(int device);

void memset(int device, void* p, int value, size_t nbytes);  // async on this thread's stream
// Copies between any two places; `src_dev`/`dst_dev` are -1 for host memory. Host <-> device
// copies are finished when this returns. GPU-to-GPU goes peer to peer where enabled (and not
// turned off by CONVNET_P2P=0), else staged through pinned host memory.
void copy(void* dst, int dst_dev, const void* src, int src_dev, size_t nbytes);
// The GPU-to-GPU copy with its path forced (tests run both paths on one physical GPU).
enum class GpuCopyPath { automatic, peer, staged };
void copy_between_gpus(void* dst, int dst_dev, const void* src, int src_dev, size_t nbytes, GpuCopyPath path);

// Page-locked host memory, cached by size like the GPU blocks (cudaMallocHost costs milliseconds
// per call). `event` (or null) marks the end of the last asynchronous copy that read the block:
// the block is handed out again only after it.
void* allocate_pinned(size_t nbytes);
void deallocate_pinned(void* p, size_t nbytes, void* event);
// Pinned host -> device, queued on this thread's stream without waiting. `*event` is replaced by
// an event recorded after the copy (the previous one, if any, is waited for first), so the host
// block is not reused before the copy has read it.
void copy_host_to_device_async(void* dst, int dst_dev, const void* src, size_t nbytes, void** event);
int64_t count_nonfinite(int device, const float* p, int64_t n);
}  // namespace gpu

}  // namespace convnet
