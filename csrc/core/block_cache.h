// Freed memory blocks kept by size class for reuse: the one mechanism behind the GPU, pinned-host
// and host allocators (csrc/core/cuda_runtime.cu, csrc/core/host_memory.cpp), each with its own
// size classes and Block type. Callers hold `m` around every member call.
#pragma once
#include <cstddef>
#include <map>
#include <mutex>

namespace convnet {

template <class Block>
struct BlockCache {
  std::mutex m;
  std::multimap<size_t, Block> free_blocks;  // by size class
  size_t cached = 0;                         // bytes in free_blocks

  // A cached block of this size class into `out`, the first that prefer(block) accepts if any,
  // else the first; false when the class has none.
  template <class Prefer>
  bool take(size_t size, Block& out, Prefer prefer) {
    const auto range = free_blocks.equal_range(size);
    auto it = range.first;
    for (auto j = range.first; j != range.second; ++j)
      if (prefer(j->second)) {
        it = j;
        break;
      }
    if (it == range.second) return false;
    out = it->second;
    free_blocks.erase(it);
    cached -= size;
    return true;
  }
  bool take(size_t size, Block& out) { return take(size, out, [](const Block&) { return false; }); }

  void put(size_t size, const Block& b) {
    free_blocks.emplace(size, b);
    cached += size;
  }

  // release(block) for every cached block; none cached after.
  template <class Release>
  void drain(Release release) {
    for (auto& kv : free_blocks) release(kv.second);
    free_blocks.clear();
    cached = 0;
  }
};

}  // namespace convnet
