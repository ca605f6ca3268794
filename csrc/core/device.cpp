// The CPU-only build's answers to the device queries in device.h; with CUDA
// built, cuda_runtime.cu provides them instead.
#ifndef CONVNET_WITH_CUDA
#include "device.h"

namespace convnet {

namespace {
[[noreturn]] void no_cuda() {
  throw DeviceError(detail::message("convnet was built without CUDA support (rebuild with a CUDA toolkit, CONVNET_CUDA=1)"));
}
}  // namespace

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_name(int) { no_cuda(); }
bool cuda_peer_access(int, int) { no_cuda(); }
void synchronize(Device) {}
DeviceGuard::DeviceGuard(Device d) { if (d.is_cuda()) no_cuda(); }
DeviceGuard::~DeviceGuard() {}

namespace gpu {
void* allocate(int, size_t) { no_cuda(); }
void deallocate(int, void*, size_t) {}
void empty_cache() {}
size_t cached_bytes(int) { return 0; }
size_t allocated_bytes(int) { return 0; }
void memset(int, void*, int, size_t) { no_cuda(); }
void copy(void*, int, const void*, int, size_t) { no_cuda(); }
void copy_between_gpus(void*, int, const void*, int, size_t, GpuCopyPath) { no_cuda(); }
void* allocate_pinned(size_t) { no_cuda(); }
void deallocate_pinned(void*, size_t, void*) {}
void copy_host_to_device_async(void*, int, const void*, size_t, void**) { no_cuda(); }
int64_t count_nonfinite(int, const float*, int64_t) { no_cuda(); }
}  // namespace gpu

}  // namespace convnet
#endif
