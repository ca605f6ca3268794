// The CUDA emulator's runtime (see cuda_runtime.h): devices, memory, copies, and the block
// scheduler that runs each CUDA thread as a fiber.
//
// Environment: CONVNET_EMU_DEVICES (GPUs to emulate, default 2, so the two-tower placements and
// peer copies run), CONVNET_EMU_SMS (multiprocessors a device reports, default 132 as an H100:
// the split-K and wave heuristics take the same paths), CONVNET_EMU_MEMORY_MB (per device,
// default 4096: past it cudaMalloc fails as on a full GPU), CONVNET_EMU_ORDER (below: a kernel that
// leans on an order of blocks or threads no GPU promises gives other results).
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cuda_runtime.h"

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

namespace emu {
void describe_fault(const char* address);  // a fiber's stack guard page (the scheduler, below)
}

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

// CONVNET_EMU_ORDER: the order blocks run in, and threads between barriers: forward (default),
// reverse, or random[:SEED] (a new shuffle at every launch and every barrier; the seed, default 1,
// makes a run repeatable).
enum class Order { Forward, Reverse, Random };

Order order() {
  static const Order o = [] {
    const std::string v = std::getenv("CONVNET_EMU_ORDER") ? std::getenv("CONVNET_EMU_ORDER") : "";
    if (v.empty() || v == "forward") return Order::Forward;
    if (v == "reverse") return Order::Reverse;
    if (v.rfind("random", 0) == 0) return Order::Random;
    std::fprintf(stderr, "CUDA emulator: CONVNET_EMU_ORDER=%s: expected forward, reverse or random[:SEED]\n", v.c_str());
    std::abort();
  }();
  return o;
}

uint64_t next_random() {
  static const uint64_t seed = [] {
    const char* v = std::getenv("CONVNET_EMU_ORDER");
    const char* colon = v ? std::strchr(v, ':') : nullptr;
    return colon ? std::strtoull(colon + 1, nullptr, 10) : 1;
  }();
  static std::atomic<uint64_t> calls{0};
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + ++calls * 0xBF58476D1CE4E5B9ull;  // splitmix64
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The positions 0..n-1 in the order asked for: position(j) for j < size, skipping those >= n.
// Random: j -> (a*j + c) mod size with a odd, a bijection on [0, size) with size a power of 2.
struct Walk {
  uint64_t n, size = 1, a = 1, c = 0;
  explicit Walk(uint64_t n_) : n(n_) {
    if (order() != Order::Random) {
      size = n;
      return;
    }
    while (size < n) size <<= 1;
    a = next_random() | 1;
    c = next_random();
  }
  uint64_t position(uint64_t j) const {
    if (order() == Order::Forward) return j;
    if (order() == Order::Reverse) return n - 1 - j;
    return (a * j + c) & (size - 1);
  }
};

constexpr int kMaxDevices = 64;

int device_count() {
  static const int n = std::max(1, std::min(kMaxDevices, env_int("CONVNET_EMU_DEVICES", 2)));
  return n;
}

size_t device_memory() {  // bytes a device holds
  static const size_t bytes = (size_t)env_int("CONVNET_EMU_MEMORY_MB", 4096) << 20;
  return bytes;
}

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

bool valid_device(int d) { return d >= 0 && d < device_count(); }

// Device memory: host memory between two inaccessible guard pages, the block ending at the upper
// one to within 16 bytes (cudaMalloc aligns to 256; 16 is what a float4 needs, and the closer
// fit finds more), filled with 0xFF bytes (NaN floats) as uninitialised memory is. An access past
// either end faults, and on_fault names the buffer; the few bytes between the end and the guard
// page hold 0xA5 and are checked when the block is freed (a write there). With
// CONVNET_NO_MEMORY_CACHING=1 every tensor is a block of its own exact size.
constexpr size_t kPage = 4096;
struct Allocation {
  int device;
  size_t bytes, span;  // asked for; rounded up to 16
  char* region;        // guard page, data pages, guard page
  size_t region_bytes;
};
std::mutex memory_mutex;
std::map<char*, Allocation> allocations;
std::vector<size_t> in_use(kMaxDevices, 0);
std::set<std::pair<int, int>> peers_enabled;

struct sigaction previous_segv;

// SIGSEGV: names the device buffer or fiber stack the address is next to, then hands the signal to
// the handler before ours (Python's faulthandler prints the traceback), which ends the process.
void on_fault(int sig, siginfo_t* info, void* context) {
  const char* a = static_cast<const char*>(info->si_addr);
  if (memory_mutex.try_lock()) {
    for (const auto& [start, m] : allocations) {
      if (a < m.region || a >= m.region + m.region_bytes) continue;
      if (a >= start)
        std::fprintf(stderr, "CUDA emulator: an access %td bytes past the end of a %zu-byte buffer on cuda:%d\n",
                     a - (start + m.bytes), m.bytes, m.device);
      else
        std::fprintf(stderr, "CUDA emulator: an access %td bytes before the start of a %zu-byte buffer on cuda:%d\n",
                     start - a, m.bytes, m.device);
    }
    memory_mutex.unlock();
  }
  emu::describe_fault(a);
  sigaction(SIGSEGV, &previous_segv, nullptr);  // the faulting access runs again, into that handler
  (void)sig;
  (void)context;
}

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction a {};
    a.sa_sigaction = on_fault;
    a.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&a.sa_mask);
    sigaction(SIGSEGV, &a, &previous_segv);
  });
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* n) {
  *n = device_count();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = current_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (!valid_device(d)) return fail(cudaErrorInvalidDevice);
  current_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!valid_device(d)) return fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "CUDA emulator (CPU) %d", d);
  p->totalGlobalMem = device_memory();
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = env_int("CONVNET_EMU_SMS", 132);
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, d) != cudaSuccess) return last_error;
  if (a == cudaDevAttrMultiProcessorCount) *v = p.multiProcessorCount;
  else if (a == cudaDevAttrComputeCapabilityMajor) *v = p.major;
  else return fail(cudaErrorInvalidValue);
  return cudaSuccess;
}
cudaError_t cudaDeviceCanAccessPeer(int* can, int from, int to) {
  if (!valid_device(from) || !valid_device(to)) return fail(cudaErrorInvalidDevice);
  *can = from != to;
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned) {
  if (!valid_device(peer) || peer == current_device) return fail(cudaErrorInvalidDevice);
  std::lock_guard<std::mutex> lock(memory_mutex);
  if (!peers_enabled.insert({current_device, peer}).second) return fail(cudaErrorPeerAccessAlreadyEnabled);
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorPeerAccessAlreadyEnabled: return "peer access is already enabled";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** p, size_t n) {
  install_fault_handler();
  if (n == 0) {  // as the runtime does: no memory, no error
    *p = nullptr;
    return cudaSuccess;
  }
  const size_t limit = device_memory();
  const size_t span = (n + 15) / 16 * 16, data = (span + kPage - 1) / kPage * kPage;
  {
    std::lock_guard<std::mutex> lock(memory_mutex);
    if (span > limit - std::min(limit, in_use[current_device])) return fail(cudaErrorMemoryAllocation);
    in_use[current_device] += span;
  }
  void* m = mmap(nullptr, data + 2 * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) {
    std::lock_guard<std::mutex> lock(memory_mutex);
    in_use[current_device] -= span;
    return fail(cudaErrorMemoryAllocation);
  }
  char* region = static_cast<char*>(m);
  mprotect(region, kPage, PROT_NONE);
  mprotect(region + kPage + data, kPage, PROT_NONE);
  char* start = region + kPage + data - span;
  std::memset(start, 0xFF, n);
  std::memset(start + n, 0xA5, span - n);
  std::lock_guard<std::mutex> lock(memory_mutex);
  allocations[start] = {current_device, n, span, region, data + 2 * kPage};
  *p = start;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  Allocation m;
  {
    std::lock_guard<std::mutex> lock(memory_mutex);
    auto it = allocations.find(static_cast<char*>(p));
    if (it == allocations.end()) return fail(cudaErrorInvalidValue);
    m = it->second;
    in_use[m.device] -= m.span;
    allocations.erase(it);
  }
  const unsigned char* tail = static_cast<unsigned char*>(p) + m.bytes;
  for (size_t i = 0; i < m.span - m.bytes; ++i)
    if (tail[i] != 0xA5) {
      std::fprintf(stderr, "CUDA emulator: a write %zu bytes past the end of a %zu-byte buffer on cuda:%d\n", i,
                   m.bytes, m.device);
      std::abort();
    }
  munmap(m.region, m.region_bytes);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t n) {
  *p = std::aligned_alloc(256, (n + 255) / 256 * 256);
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t) {
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n) std::memcpy(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_dev, const void* src, int src_dev, size_t n, cudaStream_t) {
  if (!valid_device(dst_dev) || !valid_device(src_dev)) return fail(cudaErrorInvalidDevice);
  if (n) std::memcpy(dst, src, n);
  return cudaSuccess;
}
// Work runs when it is issued, so every stream and event is always complete. Events are checked
// as the driver checks them (one destroyed twice, or never made, is an error), and the calls that
// take one yield the host thread first, so that threads sharing an event interleave there.
namespace {
std::set<cudaEvent_t> live_events;
bool live_event(cudaEvent_t e) {
  std::this_thread::yield();
  std::lock_guard<std::mutex> lock(memory_mutex);
  return live_events.count(e) > 0;
}
}  // namespace

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned) {
  return live_event(e) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = reinterpret_cast<cudaEvent_t>(new char(0));
  std::lock_guard<std::mutex> lock(memory_mutex);
  live_events.insert(*e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  return live_event(e) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  return live_event(e) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  std::this_thread::yield();
  {
    std::lock_guard<std::mutex> lock(memory_mutex);
    if (!live_events.erase(e)) return fail(cudaErrorInvalidResourceHandle);
  }
  delete reinterpret_cast<char*>(e);
  return cudaSuccess;
}

// ---- the block scheduler ----
namespace emu {
namespace {

constexpr size_t kStackBytes = 128 << 10;
constexpr size_t kGuardBytes = 4096;

enum class State { Ready, AtBarrier, AtShuffle, Done };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;  // kStackBytes above a guard page, mapped once, reused by every block
  uint3 index;
  State state = State::Done;
  int predicate = 0, count = 0;         // __syncthreads_count
  uint64_t bits = 0, result = 0;        // a shuffle's value out, and in
  int lane_mask = 0, width = 32;
};

// Stacks outlive the host threads that used them: a test suite starts many threads, and a
// mapping per stack and one per guard page would soon pass the kernel's limit on mappings.
std::mutex stack_mutex;
std::vector<char*> spare_stacks;

char* take_stack() {
  {
    std::lock_guard<std::mutex> lock(stack_mutex);
    if (!spare_stacks.empty()) {
      char* s = spare_stacks.back();
      spare_stacks.pop_back();
      return s;
    }
  }
  void* m = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  mprotect(m, kGuardBytes, PROT_NONE);  // a stack overflow faults instead of corrupting
  return static_cast<char*>(m) + kGuardBytes;
}

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  const std::function<void()>* body = nullptr;
  ~Block() {  // the host thread ends
    std::lock_guard<std::mutex> lock(stack_mutex);
    for (Fiber& f : fibers)
      if (f.stack) spare_stacks.push_back(f.stack);
  }
};

thread_local Block block;

void fiber_main() {
  Fiber& f = block.fibers[block.current];
  (*block.body)();
  f.state = State::Done;
  // returns to uc_link: the scheduler
}

void suspend(State s) {
  Fiber& f = block.fibers[block.current];
  f.state = s;
  swapcontext(&f.context, &block.scheduler);
}

// An alternate signal stack for each host thread that runs kernels: a fiber whose stack
// overflowed cannot run the fault handler on it.
void ensure_signal_stack() {
  static thread_local std::vector<char> stack;
  if (!stack.empty()) return;
  stack.resize(64 << 10);
  stack_t ss{};
  ss.ss_sp = stack.data();
  ss.ss_size = stack.size();
  sigaltstack(&ss, nullptr);
}

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "CUDA emulator: %s\n", why.c_str());
  std::abort();  // a kernel that deadlocks or faults on a GPU does not return either
}

// Releases what can be released; false when nothing could (a deadlock).
bool release_barriers(int threads) {
  int live = 0, at_barrier = 0, counted = 0;
  for (const Fiber& f : block.fibers)
    if (f.state != State::Done) {
      ++live;
      if (f.state == State::AtBarrier) {
        ++at_barrier;
        counted += f.predicate != 0;
      }
    }
  if (live > 0 && at_barrier == live) {
    for (Fiber& f : block.fibers)
      if (f.state == State::AtBarrier) {
        f.count = counted;
        f.state = State::Ready;
      }
    return true;
  }
  bool released = false;
  for (int w = 0; w * 32 < threads; ++w) {
    const int first = w * 32, last = std::min(threads, first + 32);
    bool all = true, any = false;
    for (int t = first; t < last; ++t) {
      const State s = block.fibers[t].state;
      if (s == State::Done) continue;
      any = true;
      all = all && s == State::AtShuffle;
    }
    if (!any || !all) continue;
    for (int t = first; t < last; ++t) {
      Fiber& f = block.fibers[t];
      if (f.state != State::AtShuffle) continue;
      const int lane = t - first, src_lane = lane ^ f.lane_mask;
      const int src = (src_lane / f.width == lane / f.width) ? first + src_lane : t;
      if (src >= last || block.fibers[src].state != State::AtShuffle)
        die("a warp shuffle reads a lane that has exited or is not in the shuffle");
      f.result = block.fibers[src].bits;
    }
    for (int t = first; t < last; ++t)
      if (block.fibers[t].state == State::AtShuffle) block.fibers[t].state = State::Ready;
    released = true;
  }
  return released;
}

void run_block(int threads) {
  static thread_local ucontext_t prototype;
  static thread_local bool have_prototype = false;
  if (!have_prototype) {
    getcontext(&prototype);
    have_prototype = true;
  }
  if ((int)block.fibers.size() < threads) block.fibers.resize(threads);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = block.fibers[t];
    if (!f.stack && !(f.stack = take_stack())) die("no memory for fiber stacks");
    f.context = prototype;
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &block.scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.index.x = t % blockDim.x;
    f.index.y = t / blockDim.x % blockDim.y;
    f.index.z = t / (blockDim.x * blockDim.y);
    f.state = State::Ready;
  }
  for (int t = threads; t < (int)block.fibers.size(); ++t) block.fibers[t].state = State::Done;
  for (;;) {
    bool ran = false;
    const Walk walk((uint64_t)threads);
    for (uint64_t j = 0; j < walk.size; ++j) {
      const int t = (int)walk.position(j);
      if (t >= threads || block.fibers[t].state != State::Ready) continue;
      block.current = t;
      threadIdx = block.fibers[t].index;
      swapcontext(&block.scheduler, &block.fibers[t].context);
      ran = true;
    }
    bool live = false;
    for (int t = 0; t < threads; ++t) live = live || block.fibers[t].state != State::Done;
    if (!live) return;
    if (!release_barriers(threads) && !ran)
      die("deadlock: some threads of a block wait at a barrier or shuffle the others never reach");
  }
}

}  // namespace

void describe_fault(const char* address) {
  for (const Fiber& f : block.fibers)
    if (f.stack && address >= f.stack - kGuardBytes && address < f.stack)
      std::fprintf(stderr, "CUDA emulator: a CUDA thread overflowed its %zu-byte stack\n", kStackBytes);
}

void sync_block() { suspend(State::AtBarrier); }

int sync_block_count(int predicate) {
  block.fibers[block.current].predicate = predicate;
  suspend(State::AtBarrier);
  return block.fibers[block.current].count;
}

uint64_t shuffle_xor(uint64_t bits, int lane_mask, int width) {
  Fiber& f = block.fibers[block.current];
  f.bits = bits;
  f.lane_mask = lane_mask;
  f.width = width;
  suspend(State::AtShuffle);
  return block.fibers[block.current].result;
}

void launch(const Config& c, const std::function<void()>& body) {
  const uint64_t threads = (uint64_t)c.block.x * c.block.y * c.block.z;
  const bool ok = threads >= 1 && threads <= 1024 && c.block.z <= 64 && c.grid.x >= 1 && c.grid.x <= 0x7fffffffu &&
                  c.grid.y >= 1 && c.grid.y <= 65535 && c.grid.z >= 1 && c.grid.z <= 65535 &&
                  c.shared_bytes <= 48 * 1024 && valid_device(current_device);
  if (!ok) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  if (block.body) die("a kernel launched from inside a kernel");
  ensure_signal_stack();
  gridDim = c.grid;
  blockDim = c.block;
  block.body = &body;
  const uint64_t blocks = (uint64_t)c.grid.x * c.grid.y * c.grid.z;
  const Walk walk(blocks);
  for (uint64_t j = 0; j < walk.size; ++j) {
    const uint64_t b = walk.position(j);
    if (b >= blocks) continue;
    blockIdx.x = (unsigned)(b % c.grid.x);
    blockIdx.y = (unsigned)(b / c.grid.x % c.grid.y);
    blockIdx.z = (unsigned)(b / ((uint64_t)c.grid.x * c.grid.y));
    run_block((int)threads);
  }
  block.body = nullptr;
}

}  // namespace emu
