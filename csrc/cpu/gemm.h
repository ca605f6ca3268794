// The CPU matrix multiply every conv and fully-connected twin is built on (no BLAS).
#pragma once
#include <cstddef>
#include <cstdint>

namespace convnet::cpu {

// C = op(A) op(B), or C += op(A) op(B) when accumulate; float32 storage and accumulation.
// C is m x n, row-major with row stride ldc.
// op(A) is m x k: A stored row-major as m x k (row stride lda), or as k x m when trans_a.
// op(B) is k x n: B stored row-major as k x n (row stride ldb), or as n x k when trans_b.
// Any m, n, k >= 0 (k == 0 gives C = 0, or leaves C as it is when accumulating).
// Uses every OpenMP thread, or one when called from inside a parallel region.
// Each element of C is summed in the same order whatever the thread count (deterministic).
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate);

// op(A) packed once for several products with the same left factor (a conv's weights, shared
// by every chunk of images), so that each product does not pack it again. The packed layout
// (and so every sum's order) is the one gemm() uses itself: results are identical.
class PackedA {
 public:
  PackedA() = default;
  PackedA(const PackedA&) = delete;
  PackedA& operator=(const PackedA&) = delete;
  ~PackedA();
  // Packs op(A) (m x k, stored as gemm() reads it); uses every OpenMP thread unless already
  // inside a parallel region. The buffer grows and is reused across calls.
  void pack(bool trans_a, int64_t m, int64_t k, const float* a, int64_t lda);
  int64_t m = 0, k = 0;
  const float* data() const { return data_; }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// C = op(A) op(B) (or +=), op(A) m x k given packed.
void gemm(const PackedA& a, bool trans_b, int64_t n, const float* b, int64_t ldb, float* c, int64_t ldc,
          bool accumulate);

}  // namespace convnet::cpu
