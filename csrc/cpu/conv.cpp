// CPU twins of the conv family: im2col + GEMM, one group and one chunk of images at a time
// (a chunk: as many images as make the GEMM about WIDE_N columns wide; one for the big early
// layers). Threads share out the (chunk, group) items when there are enough of them, else
// work inside im2col/col2im and the GEMM; every output element is summed in a fixed order,
// whatever the thread count.
//   forward          y_g (k/g x nb*pq)    = w_g (k/g x crs) . col (crs x nb*pq)   (+ bias)
//   backward-data    dcol (crs x nb*pq)   = w_g^T . dy_g, then col2im into dx
//   backward-filter  dw_g (k/g x crs)    += dy_g . col^T, chunk after chunk (in batch order)
// with crs = (c/g) * r * s. A 1x1, stride-1, unpadded conv of one image is already a GEMM on x.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "../kernels/conv.h"
#include "gemm.h"

namespace convnet::cpu {
namespace {

constexpr int64_t WIDE_N = 256;       // GEMM columns worth gathering several images for
constexpr int64_t PARTIAL_SUMS = 4;   // weight-gradient partial sums (parts of the batch)

bool is_pointwise(const ConvShape& s) {
  return s.r == 1 && s.s == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
}

// Images are taken nb at a time, side by side along the GEMM's n (columns (image, op, oq)), so
// that the small late layers (13x13 outputs) still give the GEMM a wide product.
int64_t images_per_chunk(const ConvShape& s) {
  const int64_t pq = s.p * s.q, chunks = std::max<int64_t>(1, (s.n * pq) / WIDE_N);
  return std::max<int64_t>(1, (s.n + chunks - 1) / chunks);
}

// dst[j] = src[j * stride] for j in [0, count): the strided copy of im2col, where one scalar
// load and store per element made im2col a fifth of conv1's time (stride 4). With AVX-512,
// strides 2 and 4 take 16 outputs from 2 or 4 contiguous vector loads and permutes (gathers
// measured slower). A block runs only when at least one output follows it, so its loads stay
// below src[count * stride] and never read past what the scalar loop would.
void strided_copy(const float* src, int64_t stride, int64_t count, float* dst) {
  int64_t j = 0;
#if defined(__AVX512F__)
  if (stride == 2) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (; j + 16 < count; j += 16) {
      const float* p = src + j * 2;
      _mm512_storeu_ps(dst + j, _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p + 16)));
    }
  } else if (stride == 4) {
    // every 4th of 32 floats, in both halves; lanes 0-7 from the first 32, 8-15 from the next
    const __m512i fourth = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    for (; j + 16 < count; j += 16) {
      const float* p = src + j * 4;
      const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(p), fourth, _mm512_loadu_ps(p + 16));
      const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(p + 32), fourth, _mm512_loadu_ps(p + 48));
      _mm512_storeu_ps(dst + j, _mm512_mask_blend_ps(0xFF00, lo, hi));
    }
  }
#endif
  for (; j < count; ++j) dst[j] = src[j * stride];
}

// Scratch buffers reused across calls, one set per thread (each OpenMP thread, and each
// Python thread calling in, as kernels run without the GIL).
float* scratch(std::vector<float>& buf, size_t n) {
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}
thread_local std::vector<float> col_buf, mat_buf, partial_buf, frame_buf;

// One input channel's rows [top, top + rows) and columns [-pad_w, -pad_w + width), zero outside
// the image: the frame a band of output rows reads, so that im2col and col2im move plain
// (strided) rows with no bounds tests. Small (conv1's band: 63 x 227 floats; conv3-5: 15 x 15).
struct Frame {
  int64_t top, rows, width;
  int64_t left, inside;  // a row's columns of left padding, then of image (input columns 0 .. inside - 1)
  Frame(const ConvShape& s, int64_t p0, int64_t p1)
      : top(p0 * s.stride_h - s.pad_h), rows((p1 - p0 - 1) * s.stride_h + s.r), width((s.q - 1) * s.stride_w + s.s),
        left(std::min(s.pad_w, width)), inside(std::max<int64_t>(0, std::min(s.w, width - left))) {}
  int64_t floats() const { return rows * width; }
};

// f = the frame of channel plane xc (h x w).
void fill_frame(const ConvShape& s, const Frame& fr, const float* xc, float* f) {
  const int64_t left = fr.left, inside = fr.inside;
  for (int64_t t = 0; t < fr.rows; ++t) {
    float* o = f + t * fr.width;
    const int64_t ih = fr.top + t;
    if (ih < 0 || ih >= s.h) {
      std::fill(o, o + fr.width, 0.f);
      continue;
    }
    std::fill(o, o + left, 0.f);
    std::copy(xc + ih * s.w, xc + ih * s.w + inside, o + left);
    std::fill(o + left + inside, o + fr.width, 0.f);
  }
}

// dst[j] = src[j * stride], j < count; stride 1 inline (rows are short: a call per row cost more).
// AVX-512 masked loads and stores for the rows' last partial block (and expanding loads for
// col2im's adds) measured slower on the Zen 5 development machine: the small net's step 7.4 -> 8.5 ms.
inline void copy_row(const float* src, int64_t stride, int64_t count, float* dst) {
  if (stride == 1) {
#pragma omp simd
    for (int64_t j = 0; j < count; ++j) dst[j] = src[j];
  } else {
    strided_copy(src, stride, count, dst);
  }
}

// col (crs rows of ld floats) for nb images of one group, image i at x + i * x_stride, output
// rows [p0, p1) of each: row (ci, kr, ks), column i * (p1 - p0) * q + (op - p0, oq) holds
// x_i[ci, op*stride_h - pad_h + kr, oq*stride_w - pad_w + ks], or 0 in the padding. One task
// per (image, channel): its frame, then r * s rows of col copied out of it.
void im2col(const ConvShape& s, int64_t cg, const float* x, int64_t x_stride, int64_t nb, int64_t p0, int64_t p1,
            float* col, int64_t ld) {
  if (p1 <= p0 || s.q <= 0) return;
  const Frame fr(s, p0, p1);
  const int64_t bp = p1 - p0, pq = bp * s.q;
  // Stride 1: a row shorter than kChunk floats is copied as one whole chunk, running on into the
  // next row's place, which is written after it; only the rows whose chunk would reach past this
  // image's part of the col row (another task's) are copied exactly. The frame has kChunk floats
  // of slack for the reads.
  constexpr int64_t kChunk = 16;
  const int64_t chunked = s.stride_w == 1 && s.q < kChunk && pq >= kChunk ? (pq - kChunk) / s.q + 1 : 0;  // rows
#pragma omp parallel for schedule(dynamic, 1) if (nb * cg > 1 && nb * cg * s.r * s.s * pq > 32768)
  for (int64_t task = 0; task < nb * cg; ++task) {
    const int64_t i = task / cg, ci = task % cg;
    float* f = scratch(frame_buf, fr.floats() + kChunk);
    fill_frame(s, fr, x + i * x_stride + ci * s.h * s.w, f);
    for (int64_t kr = 0; kr < s.r; ++kr)
      for (int64_t ks = 0; ks < s.s; ++ks) {
        float* out = col + ((ci * s.r + kr) * s.s + ks) * ld + i * pq;
        const float* src = f + kr * fr.width + ks;
        int64_t op = 0;
        for (; op < chunked; ++op) std::memcpy(out + op * s.q, src + op * s.stride_h * fr.width, kChunk * sizeof(float));
        for (; op < bp; ++op) copy_row(src + op * s.stride_h * fr.width, s.stride_w, s.q, out + op * s.q);
      }
  }
}

// The inverse gather: dx_i (cg x h x w at dx + i * dx_stride, overwritten) = the sum of every
// col entry over the input pixel it was read from. One task per (image, channel): the entries
// are added into a zeroed frame in the order (kr, ks) for every pixel (each (kr, ks) reaches a
// pixel at most once), then the frame's inside is dx; pixels no window reads get 0.
void col2im(const ConvShape& s, int64_t cg, const float* col, int64_t ld, int64_t nb, float* dx, int64_t dx_stride) {
  const int64_t pq = s.p * s.q;
  if (pq <= 0) {
    for (int64_t i = 0; i < nb; ++i) std::fill(dx + i * dx_stride, dx + i * dx_stride + cg * s.h * s.w, 0.f);
    return;
  }
  const Frame fr(s, 0, s.p);
#pragma omp parallel for schedule(dynamic, 1) if (nb * cg > 1 && nb * cg * s.r * s.s * pq > 32768)
  for (int64_t task = 0; task < nb * cg; ++task) {
    const int64_t i = task / cg, ci = task % cg;
    float* f = scratch(frame_buf, fr.floats());
    std::fill(f, f + fr.floats(), 0.f);
    for (int64_t kr = 0; kr < s.r; ++kr)
      for (int64_t ks = 0; ks < s.s; ++ks) {
        const float* d = col + ((ci * s.r + kr) * s.s + ks) * ld + i * pq;
        for (int64_t op = 0; op < s.p; ++op) {
          float* o = f + (op * s.stride_h + kr) * fr.width + ks;
          const float* dr = d + op * s.q;
          if (s.stride_w == 1) {
#pragma omp simd
            for (int64_t j = 0; j < s.q; ++j) o[j] += dr[j];
          } else {
            for (int64_t j = 0; j < s.q; ++j) o[j * s.stride_w] += dr[j];
          }
        }
      }
    float* xc = dx + i * dx_stride + ci * s.h * s.w;
    const int64_t left = fr.left, inside = fr.inside;
    for (int64_t ih = 0; ih < s.h; ++ih) {
      float* xr = xc + ih * s.w;
      const int64_t t = ih - fr.top;  // the frame row of input row ih
      if (t >= fr.rows) {
        std::fill(xr, xr + s.w, 0.f);
        continue;
      }
      std::copy(f + t * fr.width + left, f + t * fr.width + left + inside, xr);
      std::fill(xr + inside, xr + s.w, 0.f);
    }
  }
}

// rows x (nb images) blocks between NCHW-like storage (image i, row kk at t + i * t_stride + kk * pq)
// and a matrix with the images side by side (row kk at m + kk * nb * pq + i * pq).
void images_to_matrix(const float* t, int64_t t_stride, int64_t rows, int64_t pq, int64_t nb, float* m) {
#pragma omp parallel for schedule(static) if (rows * nb * pq > 65536)
  for (int64_t kk = 0; kk < rows; ++kk)
    for (int64_t i = 0; i < nb; ++i) std::memcpy(m + (kk * nb + i) * pq, t + i * t_stride + kk * pq, pq * sizeof(float));
}
void matrix_to_images(const float* m, int64_t rows, int64_t pq, int64_t nb, const float* bias, float* t,
                      int64_t t_stride) {
#pragma omp parallel for schedule(static) if (rows * nb * pq > 65536)
  for (int64_t kk = 0; kk < rows; ++kk)
    for (int64_t i = 0; i < nb; ++i) {
      const float* src = m + (kk * nb + i) * pq;
      float* dst = t + i * t_stride + kk * pq;
      const float add = bias ? bias[kk] : 0.f;
      for (int64_t j = 0; j < pq; ++j) dst[j] = src[j] + add;
    }
}

// Every group's weights packed once per call as the GEMM's left factor: w_g (forward) or
// w_g^T (backward-data), shared read-only by all the (chunk, group) items, which would
// otherwise each pack the same weights again.
const std::vector<std::unique_ptr<PackedA>>& packed_weights(const ConvShape& s, const float* w, bool transposed) {
  thread_local std::vector<std::unique_ptr<PackedA>> packs;
  const int64_t kg = s.k / s.groups, crs = s.c / s.groups * s.r * s.s;
  while ((int64_t)packs.size() < s.groups) packs.push_back(std::make_unique<PackedA>());
  for (int64_t g = 0; g < s.groups; ++g) {
    if (transposed)
      packs[g]->pack(true, crs, kg, w + g * kg * crs, crs);
    else
      packs[g]->pack(false, kg, crs, w + g * kg * crs, crs);
  }
  return packs;
}

// body(item) for every item in [0, items). With at least one item per thread: one parallel
// region handing items out as threads come free (no barrier but the last, which matters on
// cores shared with other work; im2col and GEMM inside then run on their thread alone).
// Otherwise one item after another, each using every thread inside im2col and the GEMM.
// Results are the same either way: how work is split never changes an order of summation.
// An exception (out of memory for a scratch buffer) must not leave a parallel region: the
// first one is kept and thrown after it.
template <class Body>
void for_each_item(int64_t items, const Body& body) {
  if (items > 1 && items >= omp_get_max_threads() && !omp_in_parallel()) {
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < items; ++i) {
      try {
        body(i);
      } catch (...) {
#pragma omp critical(convnet_conv_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  } else {
    for (int64_t i = 0; i < items; ++i) body(i);
  }
}

}  // namespace

// Output rows per forward item (and backward-filter GEMM) of one image. A big early layer's col for a whole image
// (conv1: 4.4 MB) is written out to L3 and read back by the GEMM's packing; a band of rows
// at least BAND_MIN_COLS wide keeps it near L2 size (conv1: 4 bands, 1.1 MB) and the GEMM
// still wide (measured best among 256..1536; conv2's 27 x 27 stays one band).
constexpr int64_t BAND_MIN_COLS = 768;
int64_t rows_per_band(const ConvShape& s, int64_t nb_max) {
  if (nb_max > 1 || is_pointwise(s) || s.p <= 0 || s.q <= 0) return s.p;  // one band
  const int64_t rows = (BAND_MIN_COLS + s.q - 1) / s.q, bands = (s.p + rows - 1) / rows;
  return (s.p + bands - 1) / bands;  // as even as possible
}

// Items: (chunk of images, group, band of output rows); several bands only with one image a chunk.
void conv2d(const ConvShape& s, const float* x, const float* w, const float* b, float* y) {
  const int64_t cg = s.c / s.groups, kg = s.k / s.groups, crs = cg * s.r * s.s, pq = s.p * s.q;
  const int64_t chw = s.c * s.h * s.w, kpq = s.k * pq, nb_max = images_per_chunk(s);
  const int64_t chunks = (s.n + nb_max - 1) / nb_max;
  const int64_t band = rows_per_band(s, nb_max), bands = (s.p + band - 1) / std::max<int64_t>(1, band);
  const auto& wp = packed_weights(s, w, false);
  for_each_item(chunks * s.groups * bands, [&](int64_t item) {
    const int64_t n0 = item / (s.groups * bands) * nb_max, g = item / bands % s.groups;
    const int64_t p0 = item % bands * band, p1 = std::min(s.p, p0 + band), width = (p1 - p0) * s.q;
    const int64_t nb = std::min(nb_max, s.n - n0), ld = nb * pq;
    const bool pointwise = is_pointwise(s) && nb == 1;
    const float* xg = x + n0 * chw + g * cg * s.h * s.w;
    float* yg = y + n0 * kpq + g * kg * pq;
    const float* bg = b ? b + g * kg : nullptr;
    if (nb == 1) {  // straight into y's band: start from the bias and accumulate the product onto it
      float* col = pointwise ? nullptr : scratch(col_buf, crs * width);
      if (!pointwise) im2col(s, cg, xg, chw, 1, p0, p1, col, width);
      float* yb = yg + p0 * s.q;
      if (bg)
        for (int64_t i = 0; i < kg; ++i) std::fill(yb + i * pq, yb + i * pq + width, bg[i]);
      gemm(*wp[g], false, width, pointwise ? xg : col, pointwise ? pq : width, yb, pq, bg != nullptr);
    } else {
      float* col = scratch(col_buf, crs * ld);
      im2col(s, cg, xg, chw, nb, 0, s.p, col, ld);
      float* mat = scratch(mat_buf, kg * ld);
      gemm(*wp[g], false, ld, col, ld, mat, ld, false);
      matrix_to_images(mat, kg, pq, nb, bg, yg, kpq);
    }
  });
}

// Items: (chunk of images, group).
void conv2d_backward_data(const ConvShape& s, const float* w, const float* dy, float* dx) {
  const int64_t cg = s.c / s.groups, kg = s.k / s.groups, crs = cg * s.r * s.s, pq = s.p * s.q;
  const int64_t chw = s.c * s.h * s.w, kpq = s.k * pq, nb_max = images_per_chunk(s);
  const int64_t chunks = (s.n + nb_max - 1) / nb_max;
  const auto& wtp = packed_weights(s, w, true);
  for_each_item(chunks * s.groups, [&](int64_t item) {
    const int64_t n0 = item / s.groups * nb_max, g = item % s.groups;
    const int64_t nb = std::min(nb_max, s.n - n0), ld = nb * pq;
    const bool pointwise = is_pointwise(s) && nb == 1;
    float* dxg = dx + n0 * chw + g * cg * s.h * s.w;
    const float* dyg = dy + n0 * kpq + g * kg * pq;
    float* dcol = pointwise ? nullptr : scratch(col_buf, crs * ld);
    float* mat = nb > 1 ? scratch(mat_buf, kg * ld) : nullptr;
    if (nb > 1) images_to_matrix(dyg, kpq, kg, pq, nb, mat);
    gemm(*wtp[g], false, ld, nb > 1 ? mat : dyg, ld, pointwise ? dxg : dcol, ld, false);
    if (!pointwise) col2im(s, cg, dcol, ld, nb, dxg, chw);
  });
}

// The batch is cut into at most PARTIAL_SUMS contiguous parts (fixed by the batch size alone);
// each part's dw is summed chunk after chunk in batch order, then the parts are added in
// order: the same result for any thread count. Items: (part, group).
void conv2d_backward_filter(const ConvShape& s, const float* x, const float* dy, float* dw, float* db) {
  const int64_t cg = s.c / s.groups, kg = s.k / s.groups, crs = cg * s.r * s.s, pq = s.p * s.q;
  const int64_t chw = s.c * s.h * s.w, kpq = s.k * pq, nb_max = images_per_chunk(s), kcrs = s.k * crs;
  if (s.n == 0) std::fill(dw, dw + kcrs, 0.f);
  const int64_t parts = std::min(s.n, PARTIAL_SUMS);
  float* extra = parts > 1 ? scratch(partial_buf, (parts - 1) * kcrs) : nullptr;  // parts 1.. (part 0 is dw)
  const int64_t band = std::max<int64_t>(1, rows_per_band(s, nb_max));
  for_each_item(parts * s.groups, [&](int64_t item) {
    const int64_t part = item / s.groups, g = item % s.groups;
    const int64_t i0 = s.n * part / parts, i1 = s.n * (part + 1) / parts;
    float* dwg = (part == 0 ? dw : extra + (part - 1) * kcrs) + g * kg * crs;
    for (int64_t n0 = i0; n0 < i1; n0 += nb_max) {
      const int64_t nb = std::min(nb_max, i1 - n0), ld = nb * pq;
      const bool pointwise = is_pointwise(s) && nb == 1;
      const float* xg = x + n0 * chw + g * cg * s.h * s.w;
      const float* dyg = dy + n0 * kpq + g * kg * pq;
      if (nb == 1) {  // one image, band after band of output rows (the sum's order is fixed by the shape)
        for (int64_t p0 = 0; p0 == 0 || p0 < s.p; p0 += band) {  // once at least: dw = 0 when p == 0
          const int64_t p1 = std::min(s.p, p0 + band), width = (p1 - p0) * s.q;
          float* col = pointwise ? nullptr : scratch(col_buf, crs * width);
          if (!pointwise) im2col(s, cg, xg, chw, 1, p0, p1, col, width);
          gemm(false, true, kg, crs, width, dyg + p0 * s.q, pq, pointwise ? xg : col, pointwise ? pq : width, dwg,
               crs, n0 > i0 || p0 > 0);
        }
        continue;
      }
      float* col = pointwise ? nullptr : scratch(col_buf, crs * ld);
      float* mat = nb > 1 ? scratch(mat_buf, kg * ld) : nullptr;
      if (!pointwise) im2col(s, cg, xg, chw, nb, 0, s.p, col, ld);
      if (nb > 1) images_to_matrix(dyg, kpq, kg, pq, nb, mat);
      gemm(false, true, kg, crs, ld, nb > 1 ? mat : dyg, ld, pointwise ? xg : col, ld, dwg, crs, n0 > i0);
    }
  });
  if (parts > 1) {
#pragma omp parallel for schedule(static) if (kcrs * parts > 65536)
    for (int64_t e = 0; e < kcrs; ++e) {
      float sum = dw[e];
      for (int64_t part = 1; part < parts; ++part) sum += extra[(part - 1) * kcrs + e];
      dw[e] = sum;
    }
  }
  if (!db) return;
#pragma omp parallel for schedule(static) if (s.n * s.k * pq > 65536)
  for (int64_t k = 0; k < s.k; ++k) {
    float sum = 0.f;
    for (int64_t n = 0; n < s.n; ++n) {
      const float* d = dy + (n * s.k + k) * pq;
      float part = 0.f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = 0; i < pq; ++i) part += d[i];
      sum += part;
    }
    db[k] = sum;
  }
}

}  // namespace convnet::cpu
