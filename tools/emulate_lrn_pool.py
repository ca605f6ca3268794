"""CPU emulation of the CUDA LRN and max-pool kernels (csrc/cuda/lrn.cu, pool.cu), for checking
their index maps, rings, chunking and grid-stride loops without a GPU.

The kernel bodies are cut verbatim out of the .cu files and compiled as host C++ with a few
stand-ins (__ldg -> load, rsqrtf -> 1/sqrtf, blockIdx/threadIdx per host thread); every thread
of every block then runs in turn, except in the kernel with barriers (max-pool variant 2's
staged gather), where each CUDA thread of a block is an OS thread, __syncthreads a std::barrier
over them, and shared memory one buffer, poisoned before each block (blocks run one at a time).
The host launchers (with <<<>>>) are mirrored by the small driver below. Outputs start as NaN, so an
unwritten element fails; results are compared with the float64 references of tests/test_lrn.py
and tests/test_pool.py, on their cases, with grids of 1, 3 and 1000 blocks (and the 64-bit index
path of the pool kernels); the pool gradient also bit for bit against the CPU twin's (convnet.ops
on the CPU). LRN inputs and outputs sit off a 128-byte line, at four offsets; the LRN also runs
tests/test_lrn.py's out-of-float-range cases, through the redo pass (lrn_redo_kernel).

    python tools/emulate_lrn_pool.py        (needs g++; about half a minute)
"""
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

STANDINS = r'''
#include <algorithm>
#include <barrier>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>
struct Dim { int64_t x = 0, y = 0, z = 0; };
static thread_local Dim blockIdx, threadIdx;
static Dim blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
template <class T> T __ldg(const T* p) { return *p; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
using std::max;
using std::min;
template <class K, class... A> void launch(int64_t grid, int64_t block, K kernel, A... args) {
  gridDim.x = grid; blockDim.x = block;
  for (int64_t b = 0; b < grid; ++b)
    for (int64_t t = 0; t < block; ++t) { blockIdx.x = b; threadIdx.x = t; kernel(args...); }
}
// a 2-D grid (gx, gy) of 3-D blocks (bx, by, bz)
template <class K, class... A>
void launch3(int64_t gx, int64_t gy, int64_t bx, int64_t by, int64_t bz, K kernel, A... args) {
  gridDim.x = gx; gridDim.y = gy; blockDim.x = bx; blockDim.y = by; blockDim.z = bz;
  for (int64_t b = 0; b < gx * gy; ++b)
    for (int64_t t = 0; t < bx * by * bz; ++t) {
      blockIdx.x = b % gx; blockIdx.y = b / gx;
      threadIdx.x = t % bx; threadIdx.y = t / bx % by; threadIdx.z = t / (bx * by);
      kernel(args...);
    }
  gridDim.y = blockDim.y = blockIdx.y = threadIdx.y = blockDim.z = threadIdx.z = 0;
}
// Kernels with barriers: a 2-D grid (gx, gy) of 3-D blocks (bx, by, bz), each CUDA thread of a
// block an OS thread running its thread of every block in turn, barriers between blocks; the
// kernel's __shared__ array (rewritten to point into emu_shared) poisoned (NaN) before each block.
static std::unique_ptr<std::barrier<>> block_sync;
static std::vector<float> emu_shared(4096);
inline void __syncthreads() { block_sync->arrive_and_wait(); }
template <class K, class... A>
void launch3_sync(int64_t gx, int64_t gy, int64_t bx, int64_t by, int64_t bz, K kernel, A... args) {
  gridDim.x = gx; gridDim.y = gy; blockDim.x = bx; blockDim.y = by; blockDim.z = bz;
  const int64_t block = bx * by * bz;
  block_sync = std::make_unique<std::barrier<>>(block);
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < block; ++t)
    threads.emplace_back([=] {
      threadIdx.x = t % bx; threadIdx.y = t / bx % by; threadIdx.z = t / (bx * by);
      for (int64_t b = 0; b < gx * gy; ++b) {
        blockIdx.x = b % gx; blockIdx.y = b / gx;
        if (t == 0) std::fill(emu_shared.begin(), emu_shared.end(), NAN);
        block_sync->arrive_and_wait();
        kernel(args...);
        block_sync->arrive_and_wait();
      }
    });
  for (auto& th : threads) th.join();
  gridDim.y = blockDim.y = blockDim.z = 0;
}
namespace convnet::cuda { inline unsigned blocks_for(long long, int) { return 1; } }
'''

DRIVER = r'''
using namespace convnet;
using namespace convnet::cuda;
template <int H, bool B> void fwd(int64_t g, const LrnShape& sh, const Split& sp, const float* x, float* y, Redo redo) {
  launch(g, kThreads, lrn_ring_kernel<H, B>, sh, sp, x, y, redo); }
template <int H, bool B>
void bwd(int64_t g, const LrnShape& sh, const Split& sp, const float* x, const float* dy, float* dx, Redo redo) {
  launch(g, kThreads, lrn_backward_ring_kernel<H, B>, sh, sp, x, dy, dx, redo); }
#define RING(F, ...) switch (clipped_half(sh)) { \
  case 0: b34 ? F<0, true>(__VA_ARGS__) : F<0, false>(__VA_ARGS__); return true; \
  case 1: b34 ? F<1, true>(__VA_ARGS__) : F<1, false>(__VA_ARGS__); return true; \
  case 2: b34 ? F<2, true>(__VA_ARGS__) : F<2, false>(__VA_ARGS__); return true; \
  case 3: b34 ? F<3, true>(__VA_ARGS__) : F<3, false>(__VA_ARGS__); return true; \
  case 4: b34 ? F<4, true>(__VA_ARGS__) : F<4, false>(__VA_ARGS__); return true; }
template <int H, bool B>
void fwd_block(int64_t g, const LrnShape& sh, const Split& sp, const float* x, float* y, Redo redo) {
  launch(g, kThreads, lrn_block_kernel<H, B, kBlockForward>, sh, sp, x, y, redo); }
template <int H, bool B>
void bwd_block(int64_t g, const LrnShape& sh, const Split& sp, const float* x, const float* dy, float* dx, Redo redo) {
  launch(g, kThreads, lrn_backward_block_kernel<H, B, block_backward(H)>, sh, sp, x, dy, dx, redo); }
// The redo pass after the kernels: 2 when the kernels raised the flag (else it returns at once), 0
// when not. The flag starts as garbage (it is never zeroed: see Redo).
int redo(const LrnShape& sh, const float* x, const float* dy, float* out, const Redo& rd) {
  launch(1, kRedoThreads, lrn_redo_kernel, sh, x, dy, out, rd);
  return *rd.flag == rd.token ? 2 : 0;
}
// variant: 0 ring kernels, 1 block kernels, 2 ring forward + block backward (as lrn_variant()
// picks in the launchers); then the redo pass (see redo)
extern "C" int emu_lrn(int64_t n, int64_t c, int64_t hw, int64_t size, float alpha, float beta, float k,
                       const float* x, float* y, int64_t g, int variant) {
  LrnShape sh{n, c, hw, size, alpha, beta, k};
  Split sp = split_channels(sh);
  bool b34 = beta == 0.75f;
  int flag = -12345;  // garbage, not the token
  const Redo rd{&flag, (int)2654435761u};
  auto ring = [&]() -> bool {
    if (variant == 1) { RING(fwd_block, g, sh, sp, x, y, rd) } else { RING(fwd, g, sh, sp, x, y, rd) }
    return false;
  };
  if (!ring()) launch(g, kThreads, lrn_direct_kernel, sh, clipped_half(sh), x, y, rd);
  return redo(sh, x, nullptr, y, rd);
}
extern "C" int emu_lrn_backward(int64_t n, int64_t c, int64_t hw, int64_t size, float alpha, float beta,
                                float k, const float* x, const float* dy, float* dx, int64_t g, int variant) {
  LrnShape sh{n, c, hw, size, alpha, beta, k};
  Split sp = split_channels(sh);
  bool b34 = beta == 0.75f;
  int flag = -12345;  // garbage, not the token
  const Redo rd{&flag, (int)2654435761u};
  auto ring = [&]() -> bool {
    if (variant == 0) { RING(bwd, g, sh, sp, x, dy, dx, rd) } else { RING(bwd_block, g, sh, sp, x, dy, dx, rd) }
    return false;
  };
  if (!ring()) {
    std::vector<float> t(n * c * hw, NAN);
    launch(g, kThreads, lrn_backward_direct_t_kernel, sh, clipped_half(sh), x, dy, t.data());
    launch(g, kThreads, lrn_backward_direct_dx_kernel, sh, clipped_half(sh), x, dy, (const float*)t.data(), dx, rd);
  }
  return redo(sh, x, dy, dx, rd);
}
// The pool launchers' choices: Index (g < 0: int64), and the paper's window compiled in or
// the runtime-size kernels (generic, also forced for 3/2 to check both).
template <class Index, int S, int T>
void pool_forward(int64_t g, const PoolShape& sh, const float* x, float* y, int32_t* idx) {
  launch(g, pool::kThreads, pool::max_pool_kernel<Index, S, T, true>, sh, x, y, idx);
}
// launch_gather's grid and block (gather_launch), except: plane blocks looped over min(plane blocks,
// |g|) grid rows, and blockDim.x forced to 8 for |g| == 3 (wider rows then loop over columns).
// staged: variant 2 (the staged kernel where a block covers whole planes, as launch_gather).
template <int S, int T, class Arg = int32_t>
void gather(int64_t g, const PoolShape& sh, const Arg* idx, const float* dy, float* dx, bool staged = false) {
  const bool tiles = S != 0;
  const int64_t tiles_h = (sh.h + sh.stride - 1) / sh.stride, planes = sh.n * sh.c;
  const int64_t columns = tiles ? (sh.w + sh.stride - 1) / sh.stride : sh.w;
  const int64_t thread_rows = tiles ? (tiles_h + pool::kGatherRows - 1) / pool::kGatherRows : tiles_h;
  int64_t bx = 8;
  while (bx < 128 && bx < columns) bx *= 2;
  if (g == 3 || g == -3) bx = 8;
  int64_t by = 1;
  while (by < pool::kThreads / bx && (by < thread_rows || (!tiles && by * bx < 64))) by *= 2;
  int64_t bz = 1;
  while (tiles && bz * 2 * bx * by <= pool::kThreads && bz < planes) bz *= 2;
  const int64_t gy = std::min<int64_t>((planes + bz - 1) / bz, g < 0 ? -g : g), gx = (thread_rows + by - 1) / by;
  if constexpr (S != 0) {
    if (staged && gx == 1 && bx * 2 >= sh.w)
      launch3_sync(gx, gy, bx, by, bz, pool::max_pool_gather_tiles_kernel<S, T, Arg, true>, sh, idx, dy, dx);
    else
      launch3(gx, gy, bx, by, bz, pool::max_pool_gather_tiles_kernel<S, T, Arg, false>, sh, idx, dy, dx);
  }
  else
    launch3(gx, gy, bx, by, 1, pool::max_pool_gather_kernel, sh, idx, dy, dx);
}
template <class Index, int S, int T>
void pool_backward(int64_t g, const PoolShape& sh, const float* x, const int32_t* idx, const float* dy, float* dx) {
  if (!idx) {  // the no-indices path: argmax into scratch, then the gather
    std::vector<int32_t> scratch(sh.n * sh.c * sh.p * sh.q, -7);
    launch(g, pool::kThreads, pool::max_pool_kernel<Index, S, T, false>, sh, x, (float*)nullptr, scratch.data());
    gather<S, T>(g, sh, (const int32_t*)scratch.data(), dy, dx);
  } else {
    gather<S, T>(g, sh, idx, dy, dx);
  }
}
// Variants 1 and 2: the backward without indices through one-byte codes (compiled window only);
// 2 also stages the gathers' dx through shared memory
template <class Index, int S, int T>
void pool_backward12(int64_t g, const PoolShape& sh, const float* x, const int32_t* idx, const float* dy, float* dx,
                     bool staged) {
  if constexpr (S != 0) {
    if (!idx) {
      std::vector<uint8_t> scratch(sh.n * sh.c * sh.p * sh.q, 77);
      launch(g, pool::kThreads, pool::max_pool_kernel<Index, S, T, false, uint8_t>, sh, x, (float*)nullptr,
             scratch.data());
      return gather<S, T, uint8_t>(g, sh, (const uint8_t*)scratch.data(), dy, dx, staged);
    }
    return gather<S, T>(g, sh, idx, dy, dx, staged);
  }
  pool_backward<Index, S, T>(g, sh, x, idx, dy, dx);
}
template <class Index, int S, int T>
void pool_backward1(int64_t g, const PoolShape& sh, const float* x, const int32_t* idx, const float* dy, float* dx) {
  pool_backward12<Index, S, T>(g, sh, x, idx, dy, dx, false);
}
template <class Index, int S, int T>
void pool_backward2(int64_t g, const PoolShape& sh, const float* x, const int32_t* idx, const float* dy, float* dx) {
  pool_backward12<Index, S, T>(g, sh, x, idx, dy, dx, true);
}
#define POOL(F, ...) \
  if (g < 0) { if (paper) F<int64_t, 3, 2>(-g, __VA_ARGS__); else F<int64_t, 0, 0>(-g, __VA_ARGS__); } \
  else { if (paper) F<uint32_t, 3, 2>(g, __VA_ARGS__); else F<uint32_t, 0, 0>(g, __VA_ARGS__); }
extern "C" void emu_pool(int64_t n, int64_t c, int64_t h, int64_t w, int64_t size, int64_t stride,
                         const float* x, float* y, int32_t* idx, int64_t g, int generic) {
  PoolShape sh{n, c, h, w, size, stride, (h - size) / stride + 1, (w - size) / stride + 1};
  const bool paper = !generic && size == 3 && stride == 2;
  POOL(pool_forward, sh, x, y, idx)
}
// variant: CONVNET_POOL_VARIANT (0, 1 or 2)
// idx null: the backward without indices (from x)
extern "C" void emu_pool_backward(int64_t n, int64_t c, int64_t h, int64_t w, int64_t size, int64_t stride,
                                  const float* x, const int32_t* idx, const float* dy, float* dx, int64_t g,
                                  int generic, int variant) {
  PoolShape sh{n, c, h, w, size, stride, (h - size) / stride + 1, (w - size) / stride + 1};
  const bool paper = !generic && size == 3 && stride == 2;
  if (variant == 1) { POOL(pool_backward1, sh, x, idx, dy, dx) }
  else if (variant == 2) { POOL(pool_backward2, sh, x, idx, dy, dx) }
  else { POOL(pool_backward, sh, x, idx, dy, dx) }
}
'''


def _accepted(p):
    """Whether ops.lrn takes these settings (the kernels trust them: csrc/ops/lrn.cpp checks)."""
    import convnet
    from convnet import ops
    try:
        ops.lrn(convnet.tensor(np.ones((1, 1, 1, 1), np.float32)), **p)
        return True
    except ValueError:
        return False


def between(text, start, end):
    i = text.index(start)
    return text[i:text.index(end, i)]


def build(workdir):
    lrn = (ROOT / "csrc/cuda/lrn.cu").read_text()
    pool = (ROOT / "csrc/cuda/pool.cu").read_text()
    # from the namespace's opening to the first host launcher; both leave `namespace {` open
    lrn_kernels = between(lrn, "namespace convnet::cuda {", "template <int H, bool kThreeQuarters>\nvoid launch_forward")
    pool_kernels = between(pool, "namespace {", "}  // namespace\n\n")
    staged = "__shared__ float staged[kStaged ? kThreads * kStride * kStride * kGatherRows : 1];"
    assert staged in pool_kernels, staged
    pool_kernels = pool_kernels.replace(staged, "float* staged = emu_shared.data(); static_assert("
                                        "kThreads * kStride * kStride * kGatherRows <= 4096);  // emu_shared's size")
    src = STANDINS + f'#include "{ROOT}/csrc/kernels/lrn.h"\n#include "{ROOT}/csrc/kernels/pool.h"\n'
    src += lrn_kernels + "}  // namespace\n\n"
    src += "namespace pool { using convnet::PoolShape;\n" + pool_kernels
    src += "}  // namespace\n}  // namespace pool\n"
    src += "}  // namespace convnet::cuda\n" + DRIVER.replace("pool::", "convnet::cuda::pool::")
    cpp, so = Path(workdir) / "emulate.cpp", Path(workdir) / "emulate.so"
    cpp.write_text(src)
    subprocess.check_call(["g++", "-O2", "-std=gnu++20", "-pthread", "-shared", "-fPIC", "-o", str(so), str(cpp)])
    lib = ctypes.CDLL(str(so))
    I, F, P = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.emu_lrn.argtypes = [I, I, I, I, F, F, F, P, P, I, ctypes.c_int]
    lib.emu_lrn_backward.argtypes = [I, I, I, I, F, F, F, P, P, P, I, ctypes.c_int]
    C = ctypes.c_int
    lib.emu_pool.argtypes = [I, I, I, I, I, I, P, P, P, I, C]
    lib.emu_pool_backward.argtypes = [I, I, I, I, I, I, P, P, P, P, I, C, C]
    return lib


def main():
    import test_lrn as tl
    import test_pool as tp

    import convnet
    from convnet import ops
    from reference import rel_error

    with tempfile.TemporaryDirectory() as tmp:
        lib = build(tmp)
        ptr = lambda a: a.ctypes.data
        rng = np.random.default_rng(5)
        failures, checked = 0, 0
        lrn_cases = tl.CASES + [((1, 300, 2, 3), 5, 0.2, 0.75, 1.0, 1.0), ((1, 300, 2, 3), 3, 0.2, 0.6, 1.0, 1.0),
                                ((1, 33, 1, 1), 7, 0.2, 0.6, 1.0, 1.0), ((2, 9, 23, 29), 9, 0.1, 0.75, 1.0, 3.0),
                                ((1, 40, 17, 16), 7, 0.1, 0.6, 1.0, 3.0)]

        def at_offset(a, floats):
            """a copied into a buffer `floats` elements past its start: tensors off a 128-byte
            line (DLPack imports may be)."""
            buf = np.full(a.size + 64, np.nan, np.float32)
            view = buf[floats:floats + a.size].reshape(a.shape)
            view[...] = a
            return view

        for grid in (1, 3, 1000, -7):  # -7: 7 blocks, the pool kernels' 64-bit index path
            small_only = abs(grid) == 1
            for (shape, size, alpha, beta, k, scale), variant in ((c, v) for c in lrn_cases for v in (0, 1)):
                if grid < 0 or (small_only and np.prod(shape) > 200000):
                    continue
                # four different line offsets (from the buffers' own, the same for all four)
                x = at_offset((rng.standard_normal(shape) * scale).astype(np.float32), 5)
                dy = at_offset(rng.standard_normal(shape).astype(np.float32), 11)
                y = at_offset(np.full(shape, np.nan, np.float32), 19 + 8 * (grid == 3))
                dx = at_offset(np.full(shape, np.nan, np.float32), 30 - 30 * (grid == 3))
                n, c, h, w = shape
                r1 = lib.emu_lrn(n, c, h * w, size, alpha, beta, k, ptr(x), ptr(y), grid, variant)
                r2 = lib.emu_lrn_backward(n, c, h * w, size, alpha, beta, k, ptr(x), ptr(dy), ptr(dx), grid, variant)
                p = dict(size=size, alpha=alpha, beta=beta, k=k)
                e1, e2 = rel_error(y, tl.lrn_ref(x, **p)), rel_error(dx, tl.lrn_backward_ref(x, dy, **p))
                checked += 1
                if e1 > 2e-6 or e2 > 1e-5 or r1 or r2:  # ordinary inputs: no element redone
                    failures += 1
                    print(f"FAIL lrn {shape} size {size} beta {beta} variant {variant} grid {grid}: {e1:.3g} {e2:.3g}"
                          f" (redo {r1} {r2})")
            # out of float's range: elements redone in double after the kernels flag them (every case
            # flags in the backward, one only there: s^(-beta-1) alone out of range)
            # and random settings and inputs across float's range (the settings the entry point accepts)
            accepted = [(x, dy, p) for x, dy, p in tl.random_range_cases(rng, 150 if small_only else 40)
                        if _accepted(p)]
            for (x, dy, p), variant in ((c, v) for c in accepted for v in (0, 1)):
                if grid < 0:
                    continue
                y, dx = np.full(x.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
                n, c, h, w = x.shape
                lib.emu_lrn(n, c, h * w, p["size"], p["alpha"], p["beta"], p["k"], ptr(x), ptr(y), grid, variant)
                lib.emu_lrn_backward(n, c, h * w, p["size"], p["alpha"], p["beta"], p["k"], ptr(x), ptr(dy),
                                     ptr(dx), grid, variant)
                checked += 1
                with np.errstate(all="ignore"):
                    bad = tl.out_of_range_errors(x, dy, y, dx, p)
                if bad:
                    failures += 1
                    print(f"FAIL lrn random range {x.shape} {p} variant {variant} grid {grid}: {bad}")
            for (x, p), variant in ((c, v) for c in tl.out_of_range_cases(rng) for v in (0, 1)):
                if grid < 0:
                    continue
                dy = rng.standard_normal(x.shape).astype(np.float32)
                y, dx = np.full(x.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
                n, c, h, w = x.shape
                r1 = lib.emu_lrn(n, c, h * w, p["size"], p["alpha"], p["beta"], p["k"], ptr(x), ptr(y), grid, variant)
                r2 = lib.emu_lrn_backward(n, c, h * w, p["size"], p["alpha"], p["beta"], p["k"], ptr(x), ptr(dy),
                                          ptr(dx), grid, variant)
                checked += 1
                bad = tl.out_of_range_errors(x, dy, y, dx, p)
                if bad or r1 not in (0, 2) or r2 != 2:
                    failures += 1
                    print(f"FAIL lrn out of range {x.shape} {p} variant {variant} grid {grid}: {bad} (redo {r1} {r2})")
            wide = [((1, 2, 7, 261), 3, 2), ((2, 1, 5, 300), 2, 2), ((1, 1, 3, 131), 3, 1)]  # rows > 128: looped
            for (shape, size, stride), variant in ((c, v) for c in tp.CASES + tp.INDEX_CASES[9:] + wide
                                                   for v in (0, 1, 2)):
                if small_only and np.prod(shape) > 200000:
                    continue
                for ties, generic in ((False, 0), (True, 0), (True, 1), ("nan", 0), ("nan", 1)):
                    if generic and (size, stride) != (3, 2):
                        continue  # other windows always take the generic kernels
                    if variant and generic:
                        continue  # the variants change only the compiled window's kernels
                    x = (rng.integers(0, 3, shape) if ties is True else rng.standard_normal(shape)).astype(np.float32)
                    if ties == "nan":  # NaNs take the windows they are in (the first one in row-major order)
                        x.flat[rng.integers(0, x.size, max(1, x.size // 50))] = np.nan
                    yref, iref = tp.max_pool_ref(x, size, stride), tp.max_pool_indices_ref(x, size, stride)
                    y = np.full(yref.shape, np.nan, np.float32)
                    idx = np.full(yref.shape, -5, np.int32)
                    dy = rng.standard_normal(yref.shape).astype(np.float32)
                    dx, dx2 = np.full(shape, np.nan, np.float32), np.full(shape, np.nan, np.float32)
                    lib.emu_pool(*shape, size, stride, ptr(x), ptr(y), ptr(idx), grid, generic)
                    lib.emu_pool_backward(*shape, size, stride, ptr(x), ptr(idx), ptr(dy), ptr(dx), grid, generic,
                                          variant)
                    lib.emu_pool_backward(*shape, size, stride, ptr(x), None, ptr(dy), ptr(dx2), grid, generic, variant)
                    # bad indices: never followed (no write outside dx), their dy dropped
                    bad = idx.copy()
                    bad.flat[::3] = rng.integers(-2**31, 2**31 - 1, bad.flat[::3].shape)
                    bad.flat[1::5] = (bad.flat[1::5] + 1) % (shape[2] * shape[3])  # mostly a neighbour
                    dx3 = np.full(shape, np.nan, np.float32)
                    lib.emu_pool_backward(*shape, size, stride, ptr(x), ptr(bad), ptr(dy), ptr(dx3), grid, generic,
                                          variant)
                    # the CPU twin's gradient from the same indices: the same bits (the same adds in
                    # the same row-major window order)
                    cpu_dx = ops.max_pool_backward(convnet.tensor(x), None, convnet.tensor(dy), size, stride,
                                                   indices=convnet.tensor(iref)).numpy()
                    e1 = 0.0 if np.array_equal(y, yref, equal_nan=True) else np.inf  # NaN windows: NaN
                    e2 = rel_error(dx, tp.max_pool_backward_ref(x, dy, size, stride))
                    e3 = rel_error(dx3, tp.scatter_indices_ref(bad, dy, shape, size, stride))
                    checked += 1
                    if (e1 > 0 or e2 > 1e-6 or e3 > 1e-6 or not np.array_equal(idx, iref) or not np.array_equal(dx, dx2)
                            or not np.array_equal(dx, cpu_dx)):
                        failures += 1
                        print(f"FAIL pool {shape} {size}/{stride} ties {ties} generic {generic} variant {variant} "
                              f"grid {grid}: "
                              f"{e1:.3g} {e2:.3g} {e3:.3g} indices equal {np.array_equal(idx, iref)} "
                              f"paths equal {np.array_equal(dx, dx2)} CPU bits equal {np.array_equal(dx, cpu_dx)}")
        print(f"emulated CUDA lrn/pool: {checked} cases, {failures} failed")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
