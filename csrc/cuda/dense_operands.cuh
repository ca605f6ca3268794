// GEMM operands that are plain row-major matrices in memory (the linear layers, the conv weights,
// the Winograd and FFT workspaces), as loaders and stores for gemm.cuh. The ops name each use,
// e.g. struct FwdWeights : MatrixLoader<...> {}: a struct rather than an alias, so kernel names
// (in profiles, in SASS) still say which operand it is.
#pragma once
#include <type_traits>

#include "gemm.cuh"

namespace convnet::cuda {

// Where element (row, col) of matrix z lies, as an offset from the base pointer. Three batch
// layouts, because the integer widths and the order of the multiply-adds decide the instructions:
// each computes exactly what the operands it replaced did, so no kernel's SASS changed.
// A layout has no padding inside: an int and an int64 in a struct nested in the operand compiled
// differently from the same members written flat (gemm_reduce_kernel; so ColsOutput stays flat).

// One matrix (z is ignored): row*ld + col, 64-bit.
struct RowMajor {
  using Offset = int64_t;
  int64_t ld;
  GEMM_HD Offset offset(int, int row, int col) const { return row * ld + col; }
  GEMM_HD Offset rows_down(int n) const { return n * ld; }  // from an element to the one n rows below
};

// Matrices of `rows` rows of ld, back to back: ((int64)z*rows + row)*ld + col.
struct RowMajorStack {
  using Offset = int64_t;
  int rows, ld;
  GEMM_HD Offset offset(int z, int row, int col) const { return ((int64_t)z * rows + row) * ld + col; }
  GEMM_HD Offset rows_down(int n) const { return (int64_t)n * ld; }
};

// Matrix z at z*zstride, all in 32 bits, for buffers under 2^31 floats: 4-byte Cols instead of
// 8-byte pointers kept the Winograd backward-filter GEMM (8 Cols per thread) within the big
// tile's 128 registers (with pointers it spilled 104 bytes on sm_90).
struct RowMajorStrided32 {
  using Offset = int;
  int zstride, ld;
  GEMM_HD Offset offset(int z, int row, int col) const { return z * zstride + row * ld + col; }
  GEMM_HD Offset rows_down(int n) const { return n * ld; }
};

// Which GEMM dimension runs along the stored rows.
enum class Contiguous { K, MN };

// Element (mn, k) of matrix z: at (row mn, col k) when contiguous along K, at (row k, col mn)
// when contiguous along MN.
template <class Layout, Contiguous kAlong>
struct MatrixLoader {
  using Offset = typename Layout::Offset;
  // 64-bit offsets: Col holds the address of (mn, 0), so a load adds only k's part; 32-bit
  // offsets: Col holds the offset (one register, see RowMajorStrided32).
  static constexpr bool kPointerCol = sizeof(Offset) == sizeof(void*);
  using Pos = std::conditional_t<kPointerCol, const float*, Offset>;

  const float* p;
  Layout layout;
  struct Col {
    bool ok;
    Pos pos;  // element (mn, 0)
  };
  GEMM_HD Col col(int z, int mn) const {
    if (mn < 0) return {false, locate(0)};
    if constexpr (kAlong == Contiguous::K)
      return {true, locate(layout.offset(z, mn, 0))};
    else
      return {true, locate(layout.offset(z, 0, mn))};
  }
  GEMM_HD const float* ptr(const Col& c, int k) const {
    if constexpr (kAlong == Contiguous::K)
      return address(c.pos, k);
    else
      return address(c.pos, layout.rows_down(k));
  }
  GEMM_HD float at(const Col& c, int k) const { return GEMM_LDG(ptr(c, k)); }

 private:
  GEMM_HD Pos locate(Offset off) const {
    if constexpr (kPointerCol)
      return p + off;
    else
      return off;
  }
  GEMM_HD const float* address(Pos from, Offset off) const {
    if constexpr (kPointerCol)
      return from + off;
    else
      return p + (from + off);
  }
};

// C(m, n) of matrix z -> p[offset of (m, n)].
template <class Layout>
struct MatrixStore {
  float* p;
  Layout layout;
  GEMM_HD void operator()(int z, int m, int n, float v) const { p[layout.offset(z, m, n)] = v; }
};

}  // namespace convnet::cuda
