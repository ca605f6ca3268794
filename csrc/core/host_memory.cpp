// Host (CPU tensor) memory: small blocks straight from the C library; large ones cached by
// size, as the GPU blocks are. Why: glibc serves a block above its mmap threshold (at most 32 MiB)
// with fresh pages from the kernel every time, and faulting them in costs more than the work
// done on them: fc6's weight gradient (151 MB) took 81 ms a call on the 2-core machine, 59 of them
// page faults, because each call's dw was new memory. A training step allocates the same shapes
// every step, so the cache hits from the second step on. Large blocks also ask for transparent
// huge pages (2 MiB pages: 512x fewer faults the first time a block is touched).
#include <algorithm>
#include <cstdlib>
#include <mutex>

#ifdef __unix__
#include <pthread.h>
#endif
#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "block_cache.h"
#include "device.h"

namespace convnet::host {
namespace {

constexpr size_t kLarge = 1u << 20;     // blocks from here on are cached
constexpr size_t kClass = 64u << 10;    // their sizes rounded up to a multiple of this (<= 6% waste)
constexpr size_t kHugePage = 2u << 20;  // alignment of the cached blocks, for huge pages

size_t cache_limit() {  // the most bytes kept cached: a quarter of the machine's memory, at most 8 GiB
  size_t limit = size_t{8} << 30;
#ifdef __linux__
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) limit = std::min(limit, (size_t)pages * (size_t)page / 4);
#endif
  return limit;
}

struct Cache : BlockCache<void*> {
  const size_t limit = cache_limit();
  void release_all() { drain([](void* p) { std::free(p); }); }  // caller holds m
};

Cache& cache() {
  static Cache* c = [] {
    Cache* made = new Cache();  // never freed: must outlive tensors destroyed at exit
#ifdef __unix__
    // The data generators fork worker processes: a child must not inherit the lock held.
    pthread_atfork([] { cache().m.lock(); }, [] { cache().m.unlock(); }, [] { cache().m.unlock(); });
#endif
    return made;
  }();
  return *c;
}

size_t rounded(size_t nbytes) {
  if (nbytes < kLarge) return (nbytes + 63) / 64 * 64;  // 64-byte aligned for vector loads
  return (nbytes + kClass - 1) / kClass * kClass;
}

void* fresh(size_t size) {
  if (size < kLarge) return std::aligned_alloc(64, size);
  void* p = std::aligned_alloc(kHugePage, (size + kHugePage - 1) / kHugePage * kHugePage);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) madvise(p, size, MADV_HUGEPAGE);  // advice only: without huge pages it is just slower
#endif
  return p;
}

}  // namespace

void* allocate(size_t nbytes) {
  const size_t size = rounded(nbytes ? nbytes : 1);
  Cache& c = cache();
  if (size >= kLarge) {
    std::lock_guard<std::mutex> lock(c.m);
    void* p = nullptr;
    if (c.take(size, p)) return p;
  }
  void* p = fresh(size);
  if (!p && size >= kLarge) {  // give the cache back and try once more
    {
      std::lock_guard<std::mutex> lock(c.m);
      c.release_all();
    }
    p = fresh(size);
  }
  CHECK_DEVICE(p, "out of host memory allocating ", nbytes, " bytes");
  return p;
}

void deallocate(void* p, size_t nbytes) {
  const size_t size = rounded(nbytes ? nbytes : 1);
  Cache& c = cache();
  if (size >= kLarge) {
    std::lock_guard<std::mutex> lock(c.m);
    if (c.cached + size <= c.limit) {
      c.put(size, p);
      return;
    }
  }
  std::free(p);
}

void empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.m);
  c.release_all();
}

size_t cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.m);
  return c.cached;
}

}  // namespace convnet::host
