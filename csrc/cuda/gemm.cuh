// One tiled float32 GEMM core shared by the conv and linear families (csrc/cuda/conv.cu,
// csrc/cuda/linear.cu): C[z](m, n) = sum_k A[z](m, k) * B[z](k, n) for z < batch, where A and B
// are not matrices in memory but *loaders* that say which element (m, k) / (k, n) is (implicit
// GEMM), and C is a *store* functor that says where (m, n) goes (and adds a bias). Every conv
// and linear op is such a GEMM; only the index functors differ, so this is the one place where
// tiling, synchronisation and bounds have to be right.
//
// Loader concept (see the functors in conv_gemm.cuh, linear_gemm.cuh, and dense_operands.cuh for
// operands that are plain matrices):
//   struct L { struct Col { bool ok; ... };
//              Col col(int z, int mn) const;      // per-row/column state, hoisted out of the k loop;
//                                                 // ok == false when mn is out of range
//              float at(const Col&, int k) const; // the element; called only with ok and k < K
//              const float* ptr(const Col&, int k) const;  // optional: its address, nullptr for
//                                                 // an implicit zero (variant 4's cp.async loop)
//   };
// Store concept: void operator()(int z, int m, int n, float v) const; called for m < M, n < N.
//
// Block tile BM x BN, k-step BK, thread micro-tile TM x TN (T = BM/TM * BN/TN threads); each
// thread owns rows ty*TM.. and columns col(0..TN-1) of the tile (two groups of 4 when TN = 8).
// Operands are staged k-major in shared memory (As[k][m], Bs[k][n], rows padded by 4 floats so
// k-fast stores do not all hit one bank), double-buffered: the next k-tile is fetched into
// registers while the current one is multiplied, then written to the other stage; one
// __syncthreads per k-tile.
// Global->register mapping per operand: KFAST (consecutive threads take consecutive k: for
// operands contiguous along k) or MN-fast (consecutive threads take consecutive m/n). Either way
// each thread's rows/columns are fixed for the whole k loop, so their Col state is computed once.
//
// Split-K (few output tiles, long reduction, e.g. backward-filter): blockIdx.z = z * splits +
// split; each split writes its partial tile to a workspace and gemm_reduce_kernel sums the
// splits in a fixed order and applies the store: deterministic, no atomics.
// Variant 4 (gemm_kernel_multistage, sm_80+): kGemmStages shared stages filled by cp.async
// straight from global memory, kGemmStages-1 k-tiles in flight, no register staging; taken when
// both loaders have ptr() (all of them do). Same tiles, splits and summation order as the above.
// Arithmetic: float32 FFMA with float32 accumulators (no tensor cores / TF32).
#pragma once
#include <cstdint>
#include <deque>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/device.h"
#include "common.cuh"

namespace convnet::cuda {

// x / d and x % d for a divisor fixed at launch, by multiply-high and shift (Granlund and
// Montgomery): valid for every 0 <= x < 2^31 and 1 <= d < 2^31.
struct FastDiv {
  uint32_t d = 1, mul = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(int64_t divisor) : d(divisor > 1 ? (uint32_t)divisor : 1u) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = (uint32_t)(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ int div(int x) const {
#ifdef __CUDA_ARCH__
    uint32_t hi = __umulhi((uint32_t)x, mul);
#else
    uint32_t hi = (uint32_t)(((uint64_t)(uint32_t)x * mul) >> 32);
#endif
    return (int)((hi + (uint32_t)x) >> shift);
  }
  __host__ __device__ __forceinline__ int mod(int x, int q) const { return x - q * (int)d; }
};

// Tile configurations. Big: the workhorse. Medium: problems where 128-wide tiles would be mostly
// padding or too few. Thin: tiny M (e.g. backward-data of a 3-channel input).
// MIN_BLOCKS: blocks per SM asked of ptxas (__launch_bounds__), i.e. a register cap.
template <int BM_, int BN_, int BK_, int TM_, int TN_, int MIN_BLOCKS_>
struct TileCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_, MIN_BLOCKS = MIN_BLOCKS_;
  static constexpr int THREADS = (BM / TM) * (BN / TN);
};
using BigTile = TileCfg<128, 128, 8, 8, 8, 2>;    // 256 threads, <= 128 registers
using BigTileWide = TileCfg<128, 128, 8, 8, 8, 1>;  // for index maps with more per-thread state
using MediumTile = TileCfg<64, 64, 8, 4, 4, 1>;   // 256 threads
using ThinTile = TileCfg<16, 128, 8, 2, 8, 1>;    // 128 threads
// Variants 2 and up: 48-row tiles for M = 48 or 96 (conv2's flipped backward-data, conv1's forward
// and backward-filter), which the 128/64-row tiles pad to 128 (25-62% padding). 128 threads,
// 3 blocks per SM (capped at 4 it spilled 72-156 bytes; uncapped 155-161 registers, no spills).
// Needs a k-fast A operand (48 rows do not split over 128 m-fast threads).
using Tile48 = TileCfg<48, 128, 8, 6, 8, 3>;

constexpr int kSmemPad = 4;

// Whether a ROWS x BK operand tile splits evenly over T threads with the given mapping.
constexpr bool tile_map_fits(int ROWS, int BK, int T, bool KFAST) {
  return (ROWS * BK) % T == 0 && (KFAST ? (T % BK == 0 && ROWS % (T / BK) == 0)
                                        : (T % ROWS == 0 && BK % (T / ROWS) == 0));
}

// Which (mn, k) of a ROWS x BK operand tile thread `tid` fetches in pass i.
template <int ROWS, int BK, int T, bool KFAST>
struct TileMap {
  static_assert(tile_map_fits(ROWS, BK, T, KFAST), "operand tile does not split over the threads");
  static constexpr int LOADS = ROWS * BK / T;
  __host__ __device__ static int mn(int tid, int i) { return KFAST ? tid / BK + i * (T / BK) : tid % ROWS; }
  __host__ __device__ static int k(int tid, int i) { return KFAST ? tid % BK : tid / ROWS + i * (T / ROWS); }
};

struct GemmShape {
  int batch, M, N, K;
  int splits;       // split-K factor (1: no split)
  int k_per_split;  // multiple of BK
};

#define GEMM_HD __host__ __device__ __forceinline__
// Read-only global load (the CPU emulation reads plainly).
#ifdef __CUDA_ARCH__
#define GEMM_LDG(p) __ldg(p)
#else
#define GEMM_LDG(p) (*(p))
#endif

template <class Cfg, int STAGES = 2>
struct __align__(16) GemmSmem {
  float As[STAGES][Cfg::BK][Cfg::BM + kSmemPad];
  float Bs[STAGES][Cfg::BK][Cfg::BN + kSmemPad];
};

// ---- variant 4: asynchronous global->shared copies (cp.async, sm_80+) ----
// Shared stages of the multistage k loop (gemm_kernel_multistage).
constexpr int kGemmStages = 4;

// Whether a loader offers ptr(col, k): the element's address, or nullptr for an implicit zero.
// Only such loaders (every element a plain load or a zero) can be copied asynchronously; others
// keep the register-staged loop.
template <class L, class = void>
struct has_ptr : std::false_type {};
template <class L>
struct has_ptr<L, std::void_t<decltype(std::declval<const L&>().ptr(std::declval<const typename L::Col&>(), 0))>>
    : std::true_type {};

// The CPU emulation's model of cp.async (tools/emulate_gemm.cu): with no queue set a copy lands
// when it is issued; with a queue in `late` mode it lands only at the wait that covers its group,
// so both a stage overwritten too early and a stage read before its wait show up as wrong results.
struct HostCopyQueue {
  bool late = false;
  std::vector<std::pair<float*, const float*>> copies;  // issued, not yet landed
  std::deque<size_t> group_ends;                         // committed groups: end index in copies
  void land(size_t n) {
    for (size_t i = 0; i < n; ++i) *copies[i].first = copies[i].second ? *copies[i].second : 0.f;
    copies.erase(copies.begin(), copies.begin() + n);
    for (auto& e : group_ends) e -= n;
  }
};
inline HostCopyQueue*& host_copy_queue() {
  static HostCopyQueue* q = nullptr;
  return q;
}

// Never read: the source operand of a zero-filling copy (src-size 0 reads nothing).
static __device__ float gemm_zero_source;

// *dst = src ? *src : 0, asynchronously (4 bytes; src-size 0 zero-fills).
GEMM_HD void gemm_copy_async(float* dst, const float* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned saddr = (unsigned)__cvta_generic_to_shared(dst);
  const int bytes = src ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(saddr),
               "l"(src ? src : &gemm_zero_source), "r"(bytes)
               : "memory");
#elif defined(__CUDA_ARCH__)
  *dst = src ? __ldg(src) : 0.f;  // (not built: the multistage kernel needs sm_80)
#else
  HostCopyQueue* q = host_copy_queue();
  if (q && q->late)
    q->copies.emplace_back(dst, src);
  else
    *dst = src ? *src : 0.f;
#endif
}

// Closes this thread's group of copies issued since the last commit (possibly empty).
GEMM_HD void gemm_copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
  HostCopyQueue* q = host_copy_queue();
  if (q && q->late) q->group_ends.push_back(q->copies.size());
#endif
}

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
GEMM_HD void gemm_copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
#elif !defined(__CUDA_ARCH__)
  HostCopyQueue* q = host_copy_queue();
  if (q && q->late)
    while (q->group_ends.size() > (size_t)PENDING) {
      q->land(q->group_ends.front());
      q->group_ends.pop_front();
    }
#endif
}

// One thread's part of a block tile: its registers and the steps of the k loop. The kernel below
// runs these steps with __syncthreads between them; tools/emulate_gemm.cu runs the very same
// steps for every thread of a block in turn on the CPU (barriers become loop boundaries), which
// is how this code was checked without a GPU.
template <class Cfg, bool A_KFAST, bool B_KFAST, class ALoad, class BLoad>
struct GemmThread {
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, TM = Cfg::TM, TN = Cfg::TN;
  static constexpr int T = Cfg::THREADS;
  using MapA = TileMap<BM, BK, T, A_KFAST>;
  using MapB = TileMap<BN, BK, T, B_KFAST>;
  static constexpr int LA = MapA::LOADS, LB = MapB::LOADS;

  int tid, tx, ty, m0, n0, z, split, k_begin, k_end, ntiles;
  typename ALoad::Col acol[LA];
  typename BLoad::Col bcol[LB];
  float ra[LA], rb[LB];
  float acc[TM][TN];

  GEMM_HD void init(const GemmShape& g, const ALoad& a, const BLoad& b, int thread, int bx, int by, int bz) {
    tid = thread;
    tx = tid % (BN / TN);
    ty = tid / (BN / TN);
    n0 = bx * BN;
    m0 = by * BM;
    z = bz / g.splits;
    split = bz % g.splits;
    k_begin = split * g.k_per_split;
    k_end = g.K < k_begin + g.k_per_split ? g.K : k_begin + g.k_per_split;
    ntiles = k_end > k_begin ? (k_end - k_begin + BK - 1) / BK : 0;
#pragma unroll
    for (int i = 0; i < LA; ++i) {
      int m = m0 + MapA::mn(tid, i);
      acol[i] = a.col(z, m < g.M ? m : -1);
    }
#pragma unroll
    for (int i = 0; i < LB; ++i) {
      int n = n0 + MapB::mn(tid, i);
      bcol[i] = b.col(z, n < g.N ? n : -1);
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
  }

  // k-tile kt of this thread's share: global -> registers, zero outside the matrix.
  GEMM_HD void fetch(const ALoad& a, const BLoad& b, int kt) {
    const int kbase = k_begin + kt * BK;
#pragma unroll
    for (int i = 0; i < LA; ++i) {
      int k = kbase + MapA::k(tid, i);
      ra[i] = (acol[i].ok && k < k_end) ? a.at(acol[i], k) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < LB; ++i) {
      int k = kbase + MapB::k(tid, i);
      rb[i] = (bcol[i].ok && k < k_end) ? b.at(bcol[i], k) : 0.f;
    }
  }

  // registers -> shared stage
  GEMM_HD void stash(GemmSmem<Cfg>& sm, int stage) const {
#pragma unroll
    for (int i = 0; i < LA; ++i) sm.As[stage][MapA::k(tid, i)][MapA::mn(tid, i)] = ra[i];
#pragma unroll
    for (int i = 0; i < LB; ++i) sm.Bs[stage][MapB::k(tid, i)][MapB::mn(tid, i)] = rb[i];
  }

  // Variant 4: k-tile kt of this thread's share copied asynchronously straight into a shared
  // stage (zero outside the matrix, past this split's k range and in the padding).
  template <int STAGES>
  GEMM_HD void issue(GemmSmem<Cfg, STAGES>& sm, const ALoad& a, const BLoad& b, int kt, int stage) const {
    const int kbase = k_begin + kt * BK;
#pragma unroll
    for (int i = 0; i < LA; ++i) {
      int k = kbase + MapA::k(tid, i);
      gemm_copy_async(&sm.As[stage][MapA::k(tid, i)][MapA::mn(tid, i)],
                      (acol[i].ok && k < k_end) ? a.ptr(acol[i], k) : nullptr);
    }
#pragma unroll
    for (int i = 0; i < LB; ++i) {
      int k = kbase + MapB::k(tid, i);
      gemm_copy_async(&sm.Bs[stage][MapB::k(tid, i)][MapB::mn(tid, i)],
                      (bcol[i].ok && k < k_end) ? b.ptr(bcol[i], k) : nullptr);
    }
  }

  // The tile column of this thread's j-th accumulator column. With TN = 8 a thread owns two groups
  // of 4 adjacent columns, BN/2 apart, so that the 8 threads of a float4 shared-memory phase read
  // 128 contiguous bytes (columns tx*TN.. would put threads tx and tx+4 on the same banks).
  GEMM_HD int col(int j) const {
    if constexpr (TN % 4 == 0)
      return (j / 4) * (BN / (TN / 4)) + tx * 4 + j % 4;
    else
      return tx * TN + j;
  }

  // acc += the stage's A tile rows ty*TM.. times its B tile columns col(0..TN-1)
  template <int STAGES>
  GEMM_HD void multiply(const GemmSmem<Cfg, STAGES>& sm, int stage) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float fa[TM], fb[TN];
      if constexpr (TM % 4 == 0) {
#pragma unroll
        for (int i = 0; i < TM; i += 4) {
          const float4 v = *reinterpret_cast<const float4*>(&sm.As[stage][kk][ty * TM + i]);
          fa[i] = v.x, fa[i + 1] = v.y, fa[i + 2] = v.z, fa[i + 3] = v.w;
        }
      } else if constexpr (TM % 2 == 0 && TM > 2 && (Cfg::BM + kSmemPad) % 2 == 0) {
        // 8-byte aligned pairs (Tile48; the thin tile keeps its scalar loads, as before variants)
#pragma unroll
        for (int i = 0; i < TM; i += 2) {
          const float2 v = *reinterpret_cast<const float2*>(&sm.As[stage][kk][ty * TM + i]);
          fa[i] = v.x, fa[i + 1] = v.y;
        }
      } else {
#pragma unroll
        for (int i = 0; i < TM; ++i) fa[i] = sm.As[stage][kk][ty * TM + i];
      }
      if constexpr (TN % 4 == 0) {
#pragma unroll
        for (int j = 0; j < TN; j += 4) {
          const float4 v = *reinterpret_cast<const float4*>(&sm.Bs[stage][kk][col(j)]);
          fb[j] = v.x, fb[j + 1] = v.y, fb[j + 2] = v.z, fb[j + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int j = 0; j < TN; ++j) fb[j] = sm.Bs[stage][kk][col(j)];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(fa[i], fb[j], acc[i][j]);
    }
  }

  // The result: through the store, or (split-K) into this split's partial tile.
  template <class Store>
  GEMM_HD void finish(const GemmShape& g, const Store& st, float* partial) const {
    float* out = g.splits == 1 ? nullptr : partial + ((int64_t)split * g.batch + z) * g.M * g.N;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      int m = m0 + ty * TM + i;
      if (m >= g.M) continue;
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        int n = n0 + col(j);
        if (n >= g.N) continue;
        if (out)
          out[(int64_t)m * g.N + n] = acc[i][j];
        else
          st(z, m, n, acc[i][j]);
      }
    }
  }
};

template <class Cfg, bool A_KFAST, bool B_KFAST, class ALoad, class BLoad, class Store>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
gemm_kernel(GemmShape g, ALoad a, BLoad b, Store st, float* __restrict__ partial) {
  __shared__ GemmSmem<Cfg> sm;
  GemmThread<Cfg, A_KFAST, B_KFAST, ALoad, BLoad> t;
  t.init(g, a, b, threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z);
  if (t.ntiles > 0) {  // ntiles is the same for the whole block
    t.fetch(a, b, 0);
    t.stash(sm, 0);
  }
  __syncthreads();
  for (int kt = 0; kt < t.ntiles; ++kt) {
    const int stage = kt & 1;
    if (kt + 1 < t.ntiles) t.fetch(a, b, kt + 1);  // in flight while we multiply
    t.multiply(sm, stage);
    // The other stage was last read in iteration kt-1, which every thread finished before the
    // __syncthreads ending it; the barrier below publishes this write before it is read.
    if (kt + 1 < t.ntiles) t.stash(sm, stage ^ 1);
    __syncthreads();
  }
  t.finish(g, st, partial);
}

// Variant 4: the k loop with STAGES shared stages filled by cp.async, STAGES-1 k-tiles in flight
// while one is multiplied. Every thread commits exactly one group per k-tile slot (empty past the
// last tile), so before iteration kt's wait it has committed STAGES-1+kt groups and tile kt is
// group kt: wait_group<STAGES-2> leaves only tiles > kt in flight. The barrier after the wait
// makes every thread's copies of tile kt visible to all, and it also ends every thread's
// multiply of tile kt-1, whose stage (kt-1) % STAGES = (kt+STAGES-1) % STAGES is the one
// refilled right after it. tools/emulate_gemm.cu runs these steps on the CPU.
template <class Cfg, int STAGES, bool A_KFAST, bool B_KFAST, class ALoad, class BLoad, class Store>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
gemm_kernel_multistage(GemmShape g, ALoad a, BLoad b, Store st, float* __restrict__ partial) {
  static_assert(STAGES >= 2, "the multistage loop needs two stages at least");
  __shared__ GemmSmem<Cfg, STAGES> sm;
  GemmThread<Cfg, A_KFAST, B_KFAST, ALoad, BLoad> t;
  t.init(g, a, b, threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < t.ntiles) t.issue(sm, a, b, s, s);
    gemm_copy_commit();
  }
  for (int kt = 0; kt < t.ntiles; ++kt) {
    gemm_copy_wait<STAGES - 2>();
    __syncthreads();
    const int next = kt + STAGES - 1;
    if (next < t.ntiles) t.issue(sm, a, b, next, next % STAGES);
    gemm_copy_commit();
    t.multiply(sm, kt % STAGES);
  }
  gemm_copy_wait<0>();  // (only empty groups are left)
  t.finish(g, st, partial);
}

// Sums the split-K partials of every (z, m, n) in split order, then stores.
template <class Store>
__global__ void __launch_bounds__(256)
gemm_reduce_kernel(GemmShape g, const float* __restrict__ partial, Store st) {
  const int64_t per_split = (int64_t)g.batch * g.M * g.N;
  const int64_t mn = (int64_t)g.M * g.N;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < per_split;
       idx += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int sp = 0; sp < g.splits; ++sp) s += partial[sp * per_split + idx];
    int z = (int)(idx / mn);
    int64_t r = idx - z * mn;
    int m = (int)(r / g.N), n = (int)(r - (int64_t)m * g.N);
    st(z, m, n, s);
  }
}

// Split the reduction when the output tiles alone would leave most SMs idle: aim for about two
// blocks per SM, but keep at least 16 k-steps per split; every split gets a non-empty k range.
inline void choose_split_k(GemmShape& g, int64_t blocks, int bk, int sms) {
  int64_t splits = 1;
  const int64_t want = 2 * (int64_t)sms;
  if (blocks < want) {
    int64_t by_k = g.K / (16 * bk);
    splits = (want + blocks - 1) / blocks;
    if (splits > by_k) splits = by_k;
    if (splits > 65535 / g.batch) splits = 65535 / g.batch;
    if (splits < 1) splits = 1;
  }
  int64_t kps = (g.K + splits - 1) / splits;
  kps = (kps + bk - 1) / bk * bk;
  if (kps == 0) kps = bk;
  splits = (g.K + kps - 1) / kps;  // rounding kps up can leave the last splits empty: drop them
  if (splits < 1) splits = 1;
  g.splits = (int)splits;
  g.k_per_split = (int)kps;
}

// Variants >= 1 (CONVNET_CONV_VARIANT, see csrc/cuda/conv.cu): the split count that minimises a
// simple time model. Blocks run in waves of `slots` (resident blocks per SM, from the occupancy
// API, times SMs); a wave lasts as long as one split's k-tiles plus ~4 k-tiles of prologue and
// epilogue; each split adds its partials' traffic (8 bytes per element: write + read, ~2.5 TB/s)
// expressed in the same unit (a wave of k-tiles at ~12.5 T multiply-adds/s). The rule above
// asks for ceil(2*SMs / blocks) splits, which for most AlexNet layers gives a few blocks more
// than the slots (e.g. conv3 backward-filter: 54 tiles x 5 = 270 blocks on 264 slots, fc6: 32 x 9
// = 288), i.e. a second, almost empty wave that costs as much as the first. A split only
// replaces no split when the model predicts >= 10% gain, so big grids are left as they were.
inline void choose_split_k_waves(GemmShape& g, int64_t blocks, int bm, int bn, int bk, int64_t slots) {
  g.splits = 1;
  g.k_per_split = g.K > 0 ? (g.K + bk - 1) / bk * bk : bk;
  if (g.K <= 0 || blocks <= 0) return;
  if (slots < 1) slots = 1;
  const int64_t ktiles = (g.K + bk - 1) / bk;
  int64_t max_splits = g.K / (16 * bk);  // >= 16 k-steps per split, as variant 0
  if (max_splits > 65535 / g.batch) max_splits = 65535 / g.batch;
  if (max_splits > 1024) max_splits = 1024;
  const double split_cost = 40.0 * g.batch * g.M * g.N / ((double)slots * bm * bn * bk);
  auto waves = [&](int64_t s) { return (blocks * s + slots - 1) / slots; };
  const double no_split = (double)waves(1) * (ktiles + 4);
  double best = no_split;
  int64_t best_tiles = ktiles, best_splits = 1;
  for (int64_t s = 2; s <= max_splits; ++s) {
    const int64_t tiles = (ktiles + s - 1) / s;        // k-tiles per split
    const int64_t used = (ktiles + tiles - 1) / tiles;  // non-empty splits
    const double cost = (double)waves(used) * (tiles + 4) + used * split_cost + 2;
    if (cost < best && cost <= 0.9 * no_split) best = cost, best_tiles = tiles, best_splits = used;
  }
  g.splits = (int)best_splits;
  g.k_per_split = (int)(best_tiles * bk);
}

inline int sm_count() {
  int dev = 0, n = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n > 0 ? n : 1;
}

// Blocks of this kernel one SM holds at once (registers, shared memory, threads), asked once.
template <class Cfg, bool A_KFAST, bool B_KFAST, class ALoad, class BLoad, class Store, bool MULTISTAGE>
int resident_blocks() {
  static const int n = [] {
    int blocks = 0;
    if constexpr (MULTISTAGE)
      CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks, gemm_kernel_multistage<Cfg, kGemmStages, A_KFAST, B_KFAST, ALoad, BLoad, Store>, Cfg::THREADS, 0));
    else
      CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks, gemm_kernel<Cfg, A_KFAST, B_KFAST, ALoad, BLoad, Store>, Cfg::THREADS, 0));
    return blocks > 0 ? blocks : 1;
  }();
  return n;
}

// Whether variant 4's multistage loop can run: both loaders give addresses, and the device has
// cp.async (compute capability 8.0+; asked once per process for the current device at first use).
inline bool device_has_cp_async() {
  static const bool yes = [] {
    int dev = 0, major = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    return major >= 8;
  }();
  return yes;
}

template <class Cfg, bool A_KFAST, bool B_KFAST, bool MULTISTAGE, class ALoad, class BLoad, class Store>
void launch_gemm_as(int batch, int M, int N, int K, const ALoad& a, const BLoad& b, const Store& st,
                    const char* name, int variant) {
  GemmShape g{batch, M, N, K, 1, 0};
  const int64_t tiles_m = (M + Cfg::BM - 1) / Cfg::BM, tiles_n = (N + Cfg::BN - 1) / Cfg::BN;
  CHECK_VALUE(tiles_m <= 65535, "GEMM ", name, " has too many rows (", M, ")");
  if (variant >= 1)
    choose_split_k_waves(g, tiles_m * tiles_n * batch, Cfg::BM, Cfg::BN, Cfg::BK,
                         (int64_t)sm_count() * resident_blocks<Cfg, A_KFAST, B_KFAST, ALoad, BLoad, Store, MULTISTAGE>());
  else
    choose_split_k(g, tiles_m * tiles_n * batch, Cfg::BK, sm_count());
  const int64_t splits = g.splits;
  CHECK_VALUE((int64_t)batch * splits <= 65535, "GEMM ", name, " batch too large (", batch, ")");

  dim3 grid((unsigned)tiles_n, (unsigned)tiles_m, (unsigned)(batch * splits));
  auto launch = [&](float* partial) {
    if constexpr (MULTISTAGE) {
      gemm_kernel_multistage<Cfg, kGemmStages, A_KFAST, B_KFAST>
          <<<grid, Cfg::THREADS, 0, stream()>>>(g, a, b, st, partial);
      CUDA_CHECK_LAUNCH("gemm_kernel_multistage");
    } else {
      gemm_kernel<Cfg, A_KFAST, B_KFAST><<<grid, Cfg::THREADS, 0, stream()>>>(g, a, b, st, partial);
      CUDA_CHECK_LAUNCH("gemm_kernel");
    }
  };
  if (splits == 1) {
    launch(nullptr);
    return;
  }
  const int64_t per_split = (int64_t)batch * M * N;
  GpuScratch ws(sizeof(float) * (size_t)(per_split * splits));
  float* partial = static_cast<float*>(ws.p);
  launch(partial);
  gemm_reduce_kernel<<<blocks_for(per_split, 256), 256, 0, stream()>>>(g, partial, st);
  CUDA_CHECK_LAUNCH("gemm_reduce_kernel");
}

template <class Cfg, bool A_KFAST, bool B_KFAST, class ALoad, class BLoad, class Store>
void launch_gemm(int batch, int M, int N, int K, const ALoad& a, const BLoad& b, const Store& st,
                 const char* name, int variant) {
  constexpr bool can_multistage = has_ptr<ALoad>::value && has_ptr<BLoad>::value;
  if constexpr (can_multistage) {
    if (variant >= 4 && device_has_cp_async())
      return launch_gemm_as<Cfg, A_KFAST, B_KFAST, true>(batch, M, N, K, a, b, st, name, variant);
  }
  launch_gemm_as<Cfg, A_KFAST, B_KFAST, false>(batch, M, N, K, a, b, st, name, variant);
}

// Fraction of a padded tile grid that is real work.
inline double tile_efficiency(int64_t M, int64_t N, int bm, int bn) {
  int64_t pm = (M + bm - 1) / bm * bm, pn = (N + bn - 1) / bn * bn;
  return (double)(M * N) / (double)(pm * pn);
}

enum class TileChoice { Thin, T48, Big, Medium };

// Whether Tile48's tile maps cover operands read this way (else run_gemm never instantiates it).
template <bool A_KFAST, bool B_KFAST>
constexpr bool tile48_fits() {
  return tile_map_fits(Tile48::BM, Tile48::BK, Tile48::THREADS, A_KFAST) &&
         tile_map_fits(Tile48::BN, Tile48::BK, Tile48::THREADS, B_KFAST);
}

// The tile shape run_gemm takes for an M x N product (host code; tools/emulate_gemm.cu asks it
// too). The big tile does ~1.25x more work per shared-memory byte than the medium one, hence the
// weight on its padding efficiency. variant: Tile48 from 2 on.
template <bool A_KFAST, bool B_KFAST, class Big = BigTile>
TileChoice choose_tile(int64_t M, int64_t N, int variant) {
  if (M <= ThinTile::BM) return TileChoice::Thin;
  const double big = tile_efficiency(M, N, Big::BM, Big::BN);
  const double medium = 0.8 * tile_efficiency(M, N, MediumTile::BM, MediumTile::BN);
  if constexpr (tile48_fits<A_KFAST, B_KFAST>()) {
    // 0.85: ~1.1x the medium tile's work per shared-memory byte (48x128 against 64x64)
    const double t48 = 0.85 * tile_efficiency(M, N, Tile48::BM, Tile48::BN);
    if (variant >= 2 && M <= 2 * Tile48::BM && t48 > big && t48 > medium) return TileChoice::T48;
  }
  return big >= medium ? TileChoice::Big : TileChoice::Medium;
}

// Runs the product on the tile choose_tile picks.
// variant: 0 = the split-K rule choose_split_k; 1 = choose_split_k_waves; 2 = that and Tile48.
template <bool A_KFAST, bool B_KFAST, class Big = BigTile, class ALoad, class BLoad, class Store>
void run_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, const ALoad& a, const BLoad& b,
              const Store& st, const char* name, int variant = 0) {
  if (batch == 0 || M == 0 || N == 0) return;
  CHECK_VALUE(M < INT32_MAX && N < INT32_MAX && K < INT32_MAX && batch < 65536, "GEMM ", name,
              " too large for 32-bit indexing (M=", M, ", N=", N, ", K=", K, ")");
  const int bt = (int)batch, m = (int)M, n = (int)N, k = (int)K;
  switch (choose_tile<A_KFAST, B_KFAST, Big>(M, N, variant)) {
    case TileChoice::Thin:
      return launch_gemm<ThinTile, A_KFAST, B_KFAST>(bt, m, n, k, a, b, st, name, variant);
    case TileChoice::T48:
      if constexpr (tile48_fits<A_KFAST, B_KFAST>())
        return launch_gemm<Tile48, A_KFAST, B_KFAST>(bt, m, n, k, a, b, st, name, variant);
      break;  // not chosen where it does not fit
    case TileChoice::Big:
      return launch_gemm<Big, A_KFAST, B_KFAST>(bt, m, n, k, a, b, st, name, variant);
    case TileChoice::Medium:
      return launch_gemm<MediumTile, A_KFAST, B_KFAST>(bt, m, n, k, a, b, st, name, variant);
  }
}

// A GEMM described as data: sizes, loaders and store (the conv and Winograd families build
// theirs with functions returning one), run by the run_gemm below.
template <class A, class B, class S, bool AK, bool BK, class BigCfg = BigTile>
struct Gemm {
  static constexpr bool A_KFAST = AK, B_KFAST = BK;
  using Big = BigCfg;  // the large tile's register budget (see the tile configurations above)
  int64_t batch, M, N, K;
  A a;
  B b;
  S st;
};

template <class G>
void run_gemm(const G& g, const char* name, int variant) {
  run_gemm<G::A_KFAST, G::B_KFAST, typename G::Big>(g.batch, g.M, g.N, g.K, g.a, g.b, g.st, name, variant);
}

// out[c] = sum over i < outer, j < inner of in[(i * channels + c) * inner + j], summed in a fixed
// order (a per-thread strided partial, then a fixed tree): deterministic bias gradients.
// One block per channel (csrc/cuda/channel_sum.cu).
void channel_sum(const float* in, int64_t outer, int64_t channels, int64_t inner, float* out);

}  // namespace convnet::cuda
