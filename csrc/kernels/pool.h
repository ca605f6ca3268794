// Twin kernels of the max-pool family (csrc/cpu/pool.cpp, csrc/cuda/pool.cu).
// Dense NCHW float32, square window `size`, stride `stride`, no padding; output
// p = (h - size) / stride + 1, q = (w - size) / stride + 1 (a partial window is dropped).
// Kernels trust PoolShape: csrc/ops/pool.cpp has checked it.
#pragma once
#include <cstdint>

namespace convnet {
struct PoolShape {
  int64_t n, c, h, w;  // input
  int64_t size, stride;
  int64_t p, q;        // output height, width
};

#ifdef __CUDACC__
#define CONVNET_POOL_HD __host__ __device__ __forceinline__
#else
#define CONVNET_POOL_HD inline
#endif

// The window order both twins use: a value v replaces the running maximum m when it is
// larger, or NaN while m is not (so NaN propagates, the first NaN winning); ties keep m,
// so in row-major scanning the first maximal element wins.
CONVNET_POOL_HD bool pool_better(float v, float m) { return m == m && !(v <= m); }
// Two values are "the same" when equal or both NaN (ties between equal maxima are broken by
// position: the first in row-major order is the window's argmax).
CONVNET_POOL_HD bool pool_same(float v, float y) { return v == y || (v != v && y != y); }

// The CUDA kernels (csrc/cuda/pool.cu): a thread per output (forward) and the register-tile
// gather (backward). Without saved indices an argmax pass writes scratch for the gather: int32
// offsets under 0 (default), one-byte codes under 1 and 2 (the paper's 3/2 window); 2 also stages
// the gathers' output through shared memory.
// CONVNET_POOL_VARIANT read once from the environment, or set_pool_variant (tests, benchmarks).
// The CPU twins ignore it.
int pool_variant();
void set_pool_variant(int variant);
}  // namespace convnet

// Saved argmax ("indices", int32, shaped like y): each window's first maximal element (the one
// pool_better keeps scanning in row-major order) as its flat offset in the input plane, h * W + w
// (PyTorch's max_pool2d(return_indices=True) convention).
#define CONVNET_POOL_TWINS                                                                     \
  /* indices: nullptr, or where each window's argmax goes */                                 \
  void max_pool(const PoolShape& sh, const float* x, float* y, int32_t* indices);              \
  /* dx (overwritten): each window's dy goes to its argmax, recomputed from x (y, which must */ \
  /* be max_pool(x), is not read); the same bits as max_pool_backward_indices */                \
  void max_pool_backward(const PoolShape& sh, const float* x, const float* y, const float* dy, float* dx); \
  /* dx (overwritten): each window's dy goes to input offset indices[window]; contributions to \
     an element are added in row-major window order (the same bits as max_pool_backward). An   \
     index outside its window is never followed: the CPU twin counts them into *invalid (the   \
     entry point raises), the CUDA twin drops their dy and sets *invalid = 0 (no sync). */     \
  void max_pool_backward_indices(const PoolShape& sh, const int32_t* indices, const float* dy, float* dx, \
                                 int64_t* invalid);

namespace convnet::cpu { CONVNET_POOL_TWINS }
namespace convnet::cuda { CONVNET_POOL_TWINS }
#undef CONVNET_POOL_TWINS
