"""CPU emulation of the CUDA softmax kernels (csrc/cuda/softmax.cu): the row kernel's block
reductions (warp shuffles, barriers, __syncthreads_count) and the findings kernel's fixed-order
sums, first bad label and non-finite count, checked without a GPU.

The kernel code is cut verbatim out of softmax.cu and compiled as host C++20 by g++. Each CUDA
thread of a block is an OS thread: __syncthreads is a std::barrier over the block, a warp
shuffle an exchange through memory between two barriers of the warp's 32 threads, __shared__
arrays are static (one block runs at a time). The launcher's steps are mirrored by the driver
below. Outputs start as NaN; results are compared with the float64 references of
tests/test_softmax.py, with grids of 1 and 3 blocks and one block a row.

    python tools/emulate_softmax.py        (needs g++; about half a minute on two cores)
"""
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from emulate_lrn_pool import between  # this folder is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

STANDINS = r'''
#include <math.h>
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
struct Dim { int64_t x = 0, y = 0, z = 0; };
static Dim blockIdx, blockDim, gridDim;  // one block runs at a time
static thread_local Dim threadIdx;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
using std::max;
using std::min;
static std::unique_ptr<std::barrier<>> block_sync;
static std::vector<std::unique_ptr<std::barrier<>>> warp_sync;
static std::vector<uint64_t> lanes;  // a shuffle's values, one slot per thread
static std::atomic<int> sync_count{0};
inline void __syncthreads() { block_sync->arrive_and_wait(); }
inline int __syncthreads_count(int predicate) {
  if (predicate) sync_count.fetch_add(1);
  __syncthreads();
  const int count = sync_count.load();
  __syncthreads();
  if (threadIdx.x == 0) sync_count.store(0);
  __syncthreads();  // the reset lands before any thread's next call
  return count;
}
template <class T> T __shfl_xor_sync(unsigned, T v, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  const int64_t t = threadIdx.x, warp = t / 32;
  std::memcpy(&lanes[t], &v, sizeof v);
  warp_sync[warp]->arrive_and_wait();
  T r;
  std::memcpy(&r, &lanes[warp * 32 + ((t % 32) ^ offset)], sizeof r);
  warp_sync[warp]->arrive_and_wait();  // the slot is read before it is written again
  return r;
}
template <class K, class... A> void launch(int64_t grid, int64_t block, K kernel, A... args) {
  gridDim.x = grid;
  blockDim.x = block;
  block_sync = std::make_unique<std::barrier<>>(block);
  warp_sync.clear();
  for (int64_t w = 0; w < block / 32; ++w) warp_sync.push_back(std::make_unique<std::barrier<>>(32));
  lanes.assign(block, 0);
  for (int64_t b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::vector<std::thread> threads;
    for (int64_t t = 0; t < block; ++t)
      threads.emplace_back([=] { threadIdx.x = t; kernel(args...); });
    for (auto& th : threads) th.join();
  }
}
'''

DRIVER = r'''
using namespace convnet;
using namespace convnet::cuda;
// softmax_cross_entropy's launcher: the row kernel (grid g, or grid_for(n) when g is 0), then
// the one-block findings kernel; found as the host receives it.
extern "C" void emu_softmax(int64_t n, int64_t k, const float* logits, const int32_t* labels, float* probs,
                            int64_t g, SoftmaxFindings* found) {
  std::vector<double> row_loss(n, NAN);
  std::vector<int> row_nonfinite(n, -99);
  launch(g ? g : grid_for(n), threads_for(k), softmax_xent_kernel, logits, labels, probs, row_loss.data(),
         row_nonfinite.data(), n, (int)k);
  launch(1, kMeanThreads, findings_kernel, (const double*)row_loss.data(), (const int*)row_nonfinite.data(),
         labels, n, (int)k, found);
}
extern "C" void emu_softmax_backward(int64_t n, int64_t k, const float* probs, const int32_t* labels,
                                     float* dlogits, int64_t g) {
  launch(g ? g : grid_for(n), threads_for(k), softmax_xent_backward_kernel, probs, labels, dlogits, n, (int)k);
}
'''


class Findings(ctypes.Structure):
    _fields_ = [("mean_loss", ctypes.c_double), ("nonfinite", ctypes.c_int64), ("bad_row", ctypes.c_int64),
                ("bad_label", ctypes.c_int32)]


def build(workdir):
    cu = (ROOT / "csrc/cuda/softmax.cu").read_text()
    kernels = between(cu, "constexpr int kMaxThreads", "}  // namespace\n")  # the kernels and their sizing
    src = STANDINS + f'#include "{ROOT}/csrc/kernels/softmax.h"\n'
    src += "namespace convnet::cuda {\nnamespace {\n" + kernels + "}  // namespace\n}  // namespace convnet::cuda\n"
    src += DRIVER
    cpp, so = Path(workdir) / "emulate.cpp", Path(workdir) / "emulate.so"
    cpp.write_text(src)
    subprocess.check_call(["g++", "-O1", "-std=gnu++20", "-pthread", "-shared", "-fPIC", "-o", str(so), str(cpp)])
    lib = ctypes.CDLL(str(so))
    I, P = ctypes.c_int64, ctypes.c_void_p
    lib.emu_softmax.argtypes = [I, I, P, P, P, I, ctypes.POINTER(Findings)]
    lib.emu_softmax_backward.argtypes = [I, I, P, P, P, I]
    return lib


def main():
    import test_softmax as ts
    from reference import rel_error

    rng = np.random.default_rng(11)
    ptr = lambda a: a.ctypes.data
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(tmp)
        failures, checked = 0, 0
        shapes = ts.SHAPES + [(3, 33), (2, 300), (9, 64), (40, 1000), (300, 3)]  # 300 rows: > kMeanThreads
        for (n, k), grid in ((s, g) for s in shapes for g in (1, 3, 0)):
            # clean rows, then bad labels and non-finite logits spread over the rows
            x = (rng.standard_normal((n, k)) * 4).astype(np.float32)
            labels = rng.integers(0, k, n).astype(np.int32)
            bad_labels, spoiled = labels.copy(), x.copy()
            bad_rows = sorted(set(rng.integers(0, n, 3).tolist()))
            bad_labels[bad_rows] = [(k, -1, 2**31 - 1)[i % 3] for i in range(len(bad_rows))]
            spots = {(int(rng.integers(0, n)), int(rng.integers(0, k))) for _ in range(5)}
            for i, (r, c) in enumerate(spots):
                spoiled[r, c] = (np.nan, np.inf, -np.inf)[i % 3]
            for logits, lab, want_bad_row, want_nonfinite in (
                    (x, labels, -1, 0), (x, bad_labels, bad_rows[0], 0), (spoiled, labels, -1, len(spots)),
                    (spoiled, bad_labels, bad_rows[0], len(spots))):
                probs = np.full((n, k), np.nan, np.float32)
                found = Findings(np.nan, -5, -5, -5)
                lib.emu_softmax(n, k, ptr(logits), ptr(lab), ptr(probs), grid, ctypes.byref(found))
                checked += 1
                ok = found.bad_row == want_bad_row and found.nonfinite == want_nonfinite
                if want_bad_row >= 0:
                    ok &= found.bad_label == lab[want_bad_row]
                e_loss = e_probs = e_dx = 0.0
                if want_bad_row < 0 and want_nonfinite == 0:  # the values only mean something here
                    want_loss, want_probs = ts.ref_softmax_xent(logits, lab)
                    e_loss = abs(found.mean_loss - want_loss) / max(1e-30, abs(want_loss))
                    e_probs = rel_error(probs, want_probs)
                    dx = np.full((n, k), np.nan, np.float32)
                    lib.emu_softmax_backward(n, k, ptr(probs), ptr(lab), ptr(dx), grid)
                    e_dx = rel_error(dx, ts.ref_softmax_xent_backward(probs.astype(np.float64), lab))
                    ok &= e_loss <= 1e-6 and e_probs <= 1e-5 and e_dx <= 1e-6
                if not ok:
                    failures += 1
                    print(f"FAIL ({n}, {k}) grid {grid}: bad row {found.bad_row} (want {want_bad_row}) label "
                          f"{found.bad_label}, non-finite {found.nonfinite} (want {want_nonfinite}), errors "
                          f"loss {e_loss:.3g} probs {e_probs:.3g} dlogits {e_dx:.3g}")
        print(f"emulated CUDA softmax: {checked} cases, {failures} failed")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
