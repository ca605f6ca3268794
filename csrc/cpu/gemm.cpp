// CPU GEMM in the BLIS style. op(A) and op(B) are packed into contiguous slivers: MR rows of
// A and NR columns of B, k-block (KC) after k-block, zero-padded at the edges so the
// micro-kernel never branches (all of A at once; B in column panels of at most 8 MiB). C is
// then cut into tiles of TILE_M x TILE_N slivers handed out dynamically to the OpenMP threads
// (the 2 cores are shared, so a static split would wait for the slowest); each tile runs the
// k-blocks in order through a register-blocked MR x NR micro-kernel (AVX-512: 12 x 32, 24
// accumulators in zmm registers, the B sliver of one k-block (32 KiB) hot in L1; AVX2: 6 x 16;
// plain C++ elsewhere). Every element of C is summed in the same order whatever the thread
// count, so results are deterministic. A B^T and A B with only a few rows of A (a fully-connected
// layer's forward and input gradient on a small batch) skip packing: B is read from memory once.
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace convnet::cpu {
namespace {

// ---- the vector type of this build: load, store, broadcast, fused multiply-add ----
#if defined(__AVX512F__)
using vf = __m512;
constexpr int VL = 16, MR = 12, NV = 2;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
// past the caches (no read for ownership) when p is 64-byte aligned
inline void vstream(float* p, vf v) { ((uintptr_t)p & 63) ? _mm512_storeu_ps(p, v) : _mm512_stream_ps(p, v); }
inline void stream_fence() { _mm_sfence(); }
inline vf vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
using vf = __m256;
constexpr int VL = 8, MR = 6, NV = 2;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline void vstream(float* p, vf v) { ((uintptr_t)p & 31) ? _mm256_storeu_ps(p, v) : _mm256_stream_ps(p, v); }
inline void stream_fence() { _mm_sfence(); }
inline vf vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
#else
using vf = float;
constexpr int VL = 1, MR = 4, NV = 4;
inline vf vzero() { return 0.f; }
inline vf vload(const float* p) { return *p; }
inline void vstore(float* p, vf v) { *p = v; }
inline void vstream(float* p, vf v) { *p = v; }
inline void stream_fence() {}
inline vf vbroadcast(const float* p) { return *p; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
#endif

// The sum of a vector's lanes, in lane order.
inline float vsum(vf v) {
  alignas(64) float lanes[VL];
  vstore(lanes, v);
  float s = 0.f;
  for (int i = 0; i < VL; ++i) s += lanes[i];
  return s;
}

constexpr int NR = NV * VL;
constexpr int64_t KC = 256;        // k-block: an A sliver plus a B sliver fit L1
constexpr int64_t TILE_M = 8, TILE_N = 4;     // slivers per unit of work: 96 x 128 of C on AVX-512
constexpr int64_t FEW_ROWS = 16;               // A B^T with at most this many rows: no packing
constexpr int64_t PANEL_FLOATS = 1 << 21;      // packed B panel: at most 8 MiB (but one sliver wide)
constexpr double STREAM_BYTES = 64.0 * (1 << 20);  // C larger than this, written once: streaming stores

// c[0..mr) x [0..nr) = (or +=) the product of a packed A sliver (kc x MR) and a packed
// B sliver (kc x NR). Full tiles are stored straight from the registers.
void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                  int mr, int nr, bool accumulate, bool stream = false) {
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = vzero();
  for (int64_t p = 0; p < kc; ++p, a += MR, b += NR) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = vload(b + j * VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      vf av = vbroadcast(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = vfma(av, bv[j], acc[i][j]);
    }
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        float* cp = c + i * ldc + j * VL;
        if (stream)
          vstream(cp, acc[i][j]);
        else
          vstore(cp, accumulate ? vadd(vload(cp), acc[i][j]) : acc[i][j]);
      }
    return;
  }
  alignas(64) float tile[MR * NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) vstore(tile + i * NR + j * VL, acc[i][j]);
  for (int i = 0; i < mr; ++i)
    for (int j = 0; j < nr; ++j) c[i * ldc + j] = accumulate ? c[i * ldc + j] + tile[i * NR + j] : tile[i * NR + j];
}

#if defined(__AVX2__)
// dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block.
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    for (int h = 0; h < 2; ++h) {
      const __m256 a = t[4 * i + h], b = t[4 * i + 2 + h];
      r[4 * i + 2 * h] = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0));
      r[4 * i + 2 * h + 1] = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2));
    }
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[4 + i], 0x20));
    _mm256_storeu_ps(dst + (4 + i) * ldd, _mm256_permute2f128_ps(r[i], r[4 + i], 0x31));
  }
}
#endif

// One packed sliver: WIDTH lanes (rows of op(A), or columns of op(B)) by kc k-steps,
// dst[p * WIDTH + l] = the element of lane l0 + l at k-step p0 + p, zero for lanes past
// `lanes`. k_contiguous: that element is src[(l0 + l) * ld + p0 + p] (transposed into the
// sliver 8 x 8 at a time); otherwise it is src[(p0 + p) * ld + l0 + l] (a plain row copy).
template <int WIDTH>
void pack_sliver(bool k_contiguous, const float* src, int64_t ld, int64_t lanes, int64_t l0, int64_t p0, int64_t kc,
                 float* dst) {
  const int64_t used = std::min<int64_t>(WIDTH, lanes - l0);
  if (k_contiguous) {
    int64_t l = 0;
#if defined(__AVX2__)
    for (; l + 8 <= used; l += 8) {  // 8 x 8 blocks through registers
      const float* s = src + (l0 + l) * ld + p0;
      int64_t p = 0;
      for (; p + 8 <= kc; p += 8) transpose8x8(s + p, ld, dst + p * WIDTH + l, WIDTH);
      for (; p < kc; ++p)
        for (int64_t ll = 0; ll < 8; ++ll) dst[p * WIDTH + l + ll] = s[ll * ld + p];
    }
#endif
    for (; l < used; ++l) {
      const float* s = src + (l0 + l) * ld + p0;
      for (int64_t p = 0; p < kc; ++p) dst[p * WIDTH + l] = s[p];
    }
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      const float* s = src + (p0 + p) * ld + l0;
      for (int64_t l = 0; l < used; ++l) dst[p * WIDTH + l] = s[l];
    }
  }
  for (int64_t p = 0; p < kc && used < WIDTH; ++p)
    for (int64_t l = used; l < WIDTH; ++l) dst[p * WIDTH + l] = 0.f;
}

// The A sliver of rows [i0, i0 + MR) and k-steps [p0, p0 + kc) of op(A) (m rows).
void pack_a(bool trans, const float* a, int64_t lda, int64_t m, int64_t i0, int64_t p0, int64_t kc, float* dst) {
  pack_sliver<MR>(!trans, a, lda, m, i0, p0, kc, dst);
}

// The B sliver of columns [j0, j0 + NR) and k-steps [p0, p0 + kc) of op(B) (n columns).
void pack_b(bool trans, const float* b, int64_t ldb, int64_t n, int64_t j0, int64_t p0, int64_t kc, float* dst) {
  pack_sliver<NR>(trans, b, ldb, n, j0, p0, kc, dst);
}

// A 64-byte aligned scratch buffer that grows and is reused, one per calling thread
// (kernels run without the GIL, so two Python threads may multiply at once).
struct Scratch {
  float* data = nullptr;
  size_t size = 0;
  ~Scratch() { std::free(data); }
  float* get(size_t n) {
    if (n > size) {
      std::free(data);
      size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      data = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data) throw std::bad_alloc();
      size = n;
    }
    return data;
  }
};
thread_local Scratch pack_scratch;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A TI x TJ block of C (=, or +=) dot products of TI rows of A with TJ rows of B (both
// contiguous along k), vectorised along k.
template <int TI, int TJ>
void dot_tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
              bool accumulate) {
  vf acc[TI][TJ];
  for (int i = 0; i < TI; ++i)
    for (int j = 0; j < TJ; ++j) acc[i][j] = vzero();
  int64_t p = 0;
  for (; p + VL <= k; p += VL) {
    vf bv[TJ];
    for (int j = 0; j < TJ; ++j) bv[j] = vload(b + j * ldb + p);
    for (int i = 0; i < TI; ++i) {
      vf av = vload(a + i * lda + p);
      for (int j = 0; j < TJ; ++j) acc[i][j] = vfma(av, bv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < TI; ++i)
    for (int j = 0; j < TJ; ++j) {
      float sum = vsum(acc[i][j]);
      for (int64_t q = p; q < k; ++q) sum += a[i * lda + q] * b[j * ldb + q];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
    }
}

// C = A B^T for a few rows of A (a fully-connected layer's forward on a small batch): dot
// products straight from the rows of B, which is read from memory once instead of being
// packed (packing would double the traffic of this memory-bound product).
void gemm_few_rows_bt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                      float* c, int64_t ldc, bool accumulate, int nt) {
#pragma omp parallel for schedule(dynamic, 8) num_threads(nt) if (nt > 1)
  for (int64_t j = 0; j < n; j += 4) {
    const float* bj = b + j * ldb;
    float* cj = c + j;
    if (j + 4 <= n) {
      int64_t i = 0;
      for (; i + 4 <= m; i += 4) dot_tile<4, 4>(k, a + i * lda, lda, bj, ldb, cj + i * ldc, ldc, accumulate);
      for (; i < m; ++i) dot_tile<1, 4>(k, a + i * lda, lda, bj, ldb, cj + i * ldc, ldc, accumulate);
    } else {
      for (int64_t jj = j; jj < n; ++jj) {
        int64_t i = 0;
        for (; i + 4 <= m; i += 4)
          dot_tile<4, 1>(k, a + i * lda, lda, b + jj * ldb, ldb, c + i * ldc + jj, ldc, accumulate);
        for (; i < m; ++i) dot_tile<1, 1>(k, a + i * lda, lda, b + jj * ldb, ldb, c + i * ldc + jj, ldc, accumulate);
      }
    }
  }
}

// C = A B for a few rows of A (a fully-connected layer's input gradient on a small batch): B is
// streamed from memory once, and each R x NR block of C stays in registers through a block of k
// (R = MR rows a pass: the other passes over the same part of B find it in L2). The earlier form
// kept a strip of C in L1 and loaded and stored it for every row of B: two loads and a store per
// multiply-add. Each element is summed over k in order, with fused multiply-adds, as before.
template <int R>
void few_rows_strip(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc,
                    bool accumulate) {
  vf acc[R][NV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = accumulate ? vload(c + i * ldc + j * VL) : vzero();
  for (int64_t p = 0; p < k; ++p) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = vload(b + p * ldb + j * VL);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const vf av = vbroadcast(a + i * lda + p);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = vfma(av, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) vstore(c + i * ldc + j * VL, acc[i][j]);
}

template <int R = MR>
void few_rows_strip_upto(int rows, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                         int64_t ldc, bool accumulate) {
  if constexpr (R > 1) {
    if (rows < R) return few_rows_strip_upto<R - 1>(rows, k, a, lda, b, ldb, c, ldc, accumulate);
  }
  few_rows_strip<R>(k, a, lda, b, ldb, c, ldc, accumulate);
}

void gemm_few_rows_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                      float* c, int64_t ldc, bool accumulate, int nt) {
  // B in blocks of KB rows x STRIP columns (256 KiB: L2), read from memory in 2 KiB runs of a
  // row; each NR-wide part of a block then goes through the registers once per MR rows of C.
  constexpr int64_t STRIP = 16 * NR, KB = 128;
  const int64_t full = n / NR * NR;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
  for (int64_t j0 = 0; j0 < n; j0 += STRIP) {
    const int64_t j1 = std::min(j0 + STRIP, full);
    for (int64_t p0 = 0; p0 < k; p0 += KB) {
      const int64_t kb = std::min(KB, k - p0);
      for (int64_t j = j0; j < j1; j += NR)
        for (int64_t i0 = 0; i0 < m; i0 += MR)
          few_rows_strip_upto((int)std::min<int64_t>(MR, m - i0), kb, a + i0 * lda + p0, lda, b + p0 * ldb + j, ldb,
                              c + i0 * ldc + j, ldc, accumulate || p0 > 0);
    }
    if (j0 + STRIP < n) continue;
    for (int64_t i = 0; i < m; ++i)  // the last n % NR columns, one element at a time
      for (int64_t j = full; j < n; ++j) {
        float sum = accumulate ? c[i * ldc + j] : 0.f;
        for (int64_t p = 0; p < k; ++p) sum = std::fma(a[i * lda + p], b[p * ldb + j], sum);
        c[i * ldc + j] = sum;
      }
  }
}

// Packed A: k-blocks of kc steps (as even as possible, at most KC), ms slivers of MR rows;
// k-block kb of sliver s starts at (kb * ms + s) * MR * kc. Depends on m and k alone.
struct ALayout {
  int64_t kblocks, kc, ms;
  ALayout(int64_t m, int64_t k) : kblocks(ceil_div(k, KC)), kc(ceil_div(k, kblocks)), ms(ceil_div(m, MR)) {}
  int64_t floats() const { return ms * MR * kblocks * kc; }
};

// Threads for a product: all of them, unless already inside a parallel region or it is tiny.
int threads_for(int64_t m, int64_t n, int64_t k) {
  if (omp_in_parallel() || 2.0 * m * n * k < 4e5) return 1;
  return omp_get_max_threads();
}

// Every sliver of op(A) into pa (ALayout), inside a parallel region or not.
void pack_a_all(bool trans_a, const float* a, int64_t lda, int64_t m, int64_t k, const ALayout& L, float* pa) {
#pragma omp for schedule(dynamic, 4) collapse(2) nowait
  for (int64_t kb = 0; kb < L.kblocks; ++kb)
    for (int64_t s = 0; s < L.ms; ++s)
      pack_a(trans_a, a, lda, m, s * MR, kb * L.kc, std::min(L.kc, k - kb * L.kc), pa + (kb * L.ms + s) * MR * L.kc);
}

// The packed product: op(A) either packed already (prepacked) or packed here into pa, while
// the first B panel is packed (no barrier between the two).
void gemm_packed(bool trans_a, const float* a, int64_t lda, const float* prepacked, bool trans_b, int64_t m,
                 int64_t n, int64_t k, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, int nt) {
  const ALayout L(m, k);
  const int64_t kblocks = L.kblocks, kc = L.kc, ms = L.ms, ns = ceil_div(n, NR);
  // op(B) is packed a panel of columns at a time (all of it unless it is large, as a
  // fully-connected layer's weights are).
  const int64_t panel_slivers = std::max<int64_t>(1, std::min(ns, PANEL_FLOATS / (kblocks * kc * NR)));
  const int64_t a_floats = prepacked ? 0 : L.floats(), b_floats = panel_slivers * NR * kblocks * kc;
  float* scratch = pack_scratch.get((size_t)(a_floats + b_floats));
  float* pb = scratch + a_floats;
  const float* pa = prepacked ? prepacked : scratch;

  auto a_sliver = [&](int64_t kb, int64_t s) { return pa + (kb * ms + s) * MR * kc; };
  auto b_sliver = [&](int64_t kb, int64_t s) { return pb + (kb * panel_slivers + s) * NR * kc; };
  // C written once (one k-block, nothing to add to) and larger than any cache (a fully-connected
  // layer's weight gradient: fc6's 151 MB): stored past the caches, which saves reading every
  // line before writing it.
  const bool stream = kblocks == 1 && !accumulate && (double)m * n * sizeof(float) > STREAM_BYTES;

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    if (!prepacked) pack_a_all(trans_a, a, lda, m, k, L, scratch);
    for (int64_t j0 = 0; j0 < ns; j0 += panel_slivers) {
      const int64_t pns = std::min(panel_slivers, ns - j0);  // slivers in this panel
#pragma omp for schedule(dynamic, 4) collapse(2)
      for (int64_t kb = 0; kb < kblocks; ++kb)
        for (int64_t s = 0; s < pns; ++s)
          pack_b(trans_b, b, ldb, n, (j0 + s) * NR, kb * kc, std::min(kc, k - kb * kc), b_sliver(kb, s));
      // Tiles of at most TILE_M x TILE_N slivers, handed out as threads come free (a core
      // shared with other work does not hold the others up); each tile runs every k-block in
      // order, so each element of C is summed in the same order whatever thread computes it.
      const int64_t tiles_m = ceil_div(ms, TILE_M), tiles_n = ceil_div(pns, TILE_N);
#pragma omp for schedule(dynamic, 1)
      for (int64_t tile = 0; tile < tiles_m * tiles_n; ++tile) {
        const int64_t tm = tile / tiles_n, tn = tile % tiles_n;
        const int64_t is0 = ms * tm / tiles_m, is1 = ms * (tm + 1) / tiles_m;
        const int64_t js0 = pns * tn / tiles_n, js1 = pns * (tn + 1) / tiles_n;
        for (int64_t kb = 0; kb < kblocks; ++kb) {
          const int64_t kcur = std::min(kc, k - kb * kc);
          const bool acc = accumulate || kb > 0;
          for (int64_t js = js0; js < js1; ++js) {
            const int64_t col = (j0 + js) * NR;
            for (int64_t is = is0; is < is1; ++is)
              micro_kernel(kcur, a_sliver(kb, is), b_sliver(kb, js), c + is * MR * ldc + col, ldc,
                           (int)std::min<int64_t>(MR, m - is * MR), (int)std::min<int64_t>(NR, n - col), acc,
                           stream);
          }
        }
      }
    }
    if (stream) stream_fence();  // this thread's streaming stores done before the region's closing barrier
  }
}

// C = 0 (or left as it is when accumulating): a product over k == 0.
void zero_product(int64_t m, int64_t n, float* c, int64_t ldc, bool accumulate) {
  if (!accumulate)
    for (int64_t i = 0; i < m; ++i) std::memset(c + i * ldc, 0, n * sizeof(float));
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return zero_product(m, n, c, ldc, accumulate);
  const int nt = threads_for(m, n, k);
  if (m <= FEW_ROWS && !trans_a && trans_b) return gemm_few_rows_bt(m, n, k, a, lda, b, ldb, c, ldc, accumulate, nt);
  if (m <= FEW_ROWS && !trans_a && !trans_b) return gemm_few_rows_nn(m, n, k, a, lda, b, ldb, c, ldc, accumulate, nt);
  gemm_packed(trans_a, a, lda, nullptr, trans_b, m, n, k, b, ldb, c, ldc, accumulate, nt);
}

PackedA::~PackedA() { std::free(data_); }

void PackedA::pack(bool trans_a, int64_t rows, int64_t depth, const float* a, int64_t lda) {
  m = rows;
  k = depth;
  if (m <= 0 || k <= 0) return;
  const ALayout L(m, k);
  if ((size_t)L.floats() > capacity_) {
    std::free(data_);
    data_ = static_cast<float*>(std::aligned_alloc(64, (L.floats() * sizeof(float) + 63) / 64 * 64));
    capacity_ = data_ ? (size_t)L.floats() : 0;
    if (!data_) throw std::bad_alloc();
  }
  const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(nt) if (nt > 1)
  pack_a_all(trans_a, a, lda, m, k, L, data_);
}

void gemm(const PackedA& a, bool trans_b, int64_t n, const float* b, int64_t ldb, float* c, int64_t ldc,
          bool accumulate) {
  if (a.m <= 0 || n <= 0) return;
  if (a.k <= 0) return zero_product(a.m, n, c, ldc, accumulate);
  gemm_packed(false, nullptr, 0, a.data(), trans_b, a.m, n, a.k, b, ldb, c, ldc, accumulate,
              threads_for(a.m, n, a.k));
}

}  // namespace convnet::cpu
