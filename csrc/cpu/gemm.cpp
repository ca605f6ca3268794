// CPU GEMM in the BLIS style. For each block of KC along k, op(A) (all m rows) and op(B)
// (all n columns) are packed into contiguous slivers: MR rows of A and NR columns of B, one
// k-step after another, zero-padded at the edges so the micro-kernel never branches. The
// sliver grid is then cut into one rectangle per thread; each thread walks its rectangle with
// an MC-row block of A kept in L2 and one B sliver (KC x NR, <= 32 KiB) hot in L1, and a
// register-blocked MR x NR micro-kernel (AVX-512: 12 x 32, 24 accumulators in zmm registers;
// AVX2: 6 x 16; a plain C++ fallback elsewhere). Every element of C is owned by one thread and
// summed in the same order for any thread count, so results are deterministic.
#include "gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
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
inline vf vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
using vf = __m256;
constexpr int VL = 8, MR = 6, NV = 2;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
#else
using vf = float;
constexpr int VL = 1, MR = 4, NV = 4;
inline vf vzero() { return 0.f; }
inline vf vload(const float* p) { return *p; }
inline void vstore(float* p, vf v) { *p = v; }
inline vf vbroadcast(const float* p) { return *p; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
#endif

constexpr int NR = NV * VL;
constexpr int64_t KC = 256;        // k-block: an A sliver plus a B sliver fit L1
constexpr int64_t MC_SLIVERS = 24;  // A rows per L2 block: 24 * MR * KC floats (~300 KB on AVX-512)

// c[0..mr) x [0..nr) = (or +=) the product of a packed A sliver (kc x MR) and a packed
// B sliver (kc x NR). Full tiles are stored straight from the registers.
void micro_kernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                  int mr, int nr, bool accumulate) {
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

// The A sliver of rows [i0, i0 + MR) and k-steps [p0, p0 + kc): dst[p * MR + i] = op(A)(i0 + i, p0 + p).
void pack_a(bool trans, const float* a, int64_t lda, int64_t m, int64_t i0, int64_t p0, int64_t kc, float* dst) {
  const int64_t rows = std::min<int64_t>(MR, m - i0);
  if (!trans) {
    for (int64_t i = 0; i < rows; ++i) {
      const float* src = a + (i0 + i) * lda + p0;
      for (int64_t p = 0; p < kc; ++p) dst[p * MR + i] = src[p];
    }
  } else {
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = a + (p0 + p) * lda + i0;
      for (int64_t i = 0; i < rows; ++i) dst[p * MR + i] = src[i];
    }
  }
  for (int64_t p = 0; p < kc && rows < MR; ++p)
    for (int64_t i = rows; i < MR; ++i) dst[p * MR + i] = 0.f;
}

// The B sliver of columns [j0, j0 + NR) and k-steps [p0, p0 + kc): dst[p * NR + j] = op(B)(p0 + p, j0 + j).
void pack_b(bool trans, const float* b, int64_t ldb, int64_t n, int64_t j0, int64_t p0, int64_t kc, float* dst) {
  const int64_t cols = std::min<int64_t>(NR, n - j0);
  if (!trans) {
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = b + (p0 + p) * ldb + j0;
      float* d = dst + p * NR;
      for (int64_t j = 0; j < cols; ++j) d[j] = src[j];
      for (int64_t j = cols; j < NR; ++j) d[j] = 0.f;
    }
  } else {
    for (int64_t j = 0; j < cols; ++j) {
      const float* src = b + (j0 + j) * ldb + p0;
      for (int64_t p = 0; p < kc; ++p) dst[p * NR + j] = src[p];
    }
    for (int64_t p = 0; p < kc && cols < NR; ++p)
      for (int64_t j = cols; j < NR; ++j) dst[p * NR + j] = 0.f;
  }
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

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::memset(c + i * ldc, 0, n * sizeof(float));
    return;
  }
  const int64_t kblocks = ceil_div(k, KC), kc = ceil_div(k, kblocks);  // even k-blocks
  const int64_t ms = ceil_div(m, MR), ns = ceil_div(n, NR);              // slivers
  float* pa = pack_scratch.get((size_t)(ms * MR + ns * NR) * kc);
  float* pb = pa + ms * MR * kc;

  // Threads: all of them, unless already inside a parallel region or the product is tiny.
  int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (2.0 * m * n * k < 4e5) nt = 1;
  nt = (int)std::min<int64_t>(nt, ms * ns);
  // Cut the ms x ns sliver grid into tm x tn rectangles (tm * tn = nt), the most even way;
  // on ties split along n, so that threads share the (usually smaller) packed A.
  int tm = 1, tn = nt;
  int64_t best = ceil_div(ms, 1) * ceil_div(ns, nt);
  for (int d = 2; d <= nt; ++d) {
    if (nt % d) continue;
    int64_t cost = ceil_div(ms, d) * ceil_div(ns, nt / d);
    if (cost < best) best = cost, tm = d, tn = nt / d;
  }

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int t = omp_get_thread_num();
    const int64_t m_lo = ms * (t / tn) / tm, m_hi = ms * (t / tn + 1) / tm;
    const int64_t n_lo = ns * (t % tn) / tn, n_hi = ns * (t % tn + 1) / tn;
    for (int64_t kb = 0; kb < kblocks; ++kb) {
      const int64_t p0 = kb * kc, kcur = std::min(kc, k - p0);
#pragma omp for schedule(static) nowait
      for (int64_t s = 0; s < ms; ++s) pack_a(trans_a, a, lda, m, s * MR, p0, kcur, pa + s * MR * kcur);
#pragma omp for schedule(static)
      for (int64_t s = 0; s < ns; ++s) pack_b(trans_b, b, ldb, n, s * NR, p0, kcur, pb + s * NR * kcur);
      const bool acc = accumulate || kb > 0;
      for (int64_t mb = m_lo; mb < m_hi; mb += MC_SLIVERS) {
        const int64_t mb_end = std::min(mb + MC_SLIVERS, m_hi);
        for (int64_t js = n_lo; js < n_hi; ++js)
          for (int64_t is = mb; is < mb_end; ++is)
            micro_kernel(kcur, pa + is * MR * kcur, pb + js * NR * kcur, c + is * MR * ldc + js * NR, ldc,
                         (int)std::min<int64_t>(MR, m - is * MR), (int)std::min<int64_t>(NR, n - js * NR), acc);
      }
#pragma omp barrier
    }
  }
}

}  // namespace convnet::cpu
