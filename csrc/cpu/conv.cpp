// CPU twins of the conv family: im2col + GEMM, one image and one group at a time, with the
// parallelism inside im2col/col2im and the GEMM (both cores busy on every layer, and every
// output element summed in a fixed order, whatever the thread count).
//   forward          y_g (k/g x pq)    = w_g (k/g x crs) . col (crs x pq)      (+ bias)
//   backward-data    dcol (crs x pq)   = w_g^T . dy_g, then col2im into dx
//   backward-filter  dw_g (k/g x crs) += dy_g . col^T, image after image (in batch order)
// with crs = (c/g) * r * s. A 1x1, stride-1, unpadded conv is already a GEMM on x: no im2col.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../kernels/conv.h"
#include "gemm.h"

namespace convnet::cpu {
namespace {

bool is_pointwise(const ConvShape& s) {
  return s.r == 1 && s.s == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
}

// The outputs o in [0, out) whose input index o * stride - pad + k lies in [0, in): [lo, hi).
void valid_outputs(int64_t k, int64_t pad, int64_t stride, int64_t in, int64_t out, int64_t& lo, int64_t& hi) {
  auto ceil_pos = [stride](int64_t a) { return a <= 0 ? int64_t(0) : (a + stride - 1) / stride; };
  lo = std::min(out, ceil_pos(pad - k));
  hi = std::max(lo, std::min(out, ceil_pos(in + pad - k)));
}

// col (crs rows, p*q columns) of one image's group: row (ci, kr, ks), column (op, oq) holds
// x[ci, op*stride_h - pad_h + kr, oq*stride_w - pad_w + ks], or 0 in the padding.
void im2col(const ConvShape& s, int64_t cg, const float* x, float* col) {
  const int64_t rows = cg * s.r * s.s, pq = s.p * s.q;
#pragma omp parallel for schedule(static) if (rows * pq > 32768)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t ci = row / (s.r * s.s), kr = row / s.s % s.r, ks = row % s.s;
    const float* xc = x + ci * s.h * s.w;
    float* out = col + row * pq;
    int64_t p_lo, p_hi, q_lo, q_hi;
    valid_outputs(kr, s.pad_h, s.stride_h, s.h, s.p, p_lo, p_hi);
    valid_outputs(ks, s.pad_w, s.stride_w, s.w, s.q, q_lo, q_hi);
    std::fill(out, out + p_lo * s.q, 0.f);
    for (int64_t op = p_lo; op < p_hi; ++op) {
      float* o = out + op * s.q;
      const float* xr = xc + (op * s.stride_h - s.pad_h + kr) * s.w + (q_lo * s.stride_w - s.pad_w + ks);
      std::fill(o, o + q_lo, 0.f);
      if (q_hi == q_lo) {
      } else if (s.stride_w == 1) {
        std::memcpy(o + q_lo, xr, (q_hi - q_lo) * sizeof(float));
      } else {
        for (int64_t oq = q_lo; oq < q_hi; ++oq) o[oq] = xr[(oq - q_lo) * s.stride_w];
      }
      std::fill(o + q_hi, o + s.q, 0.f);
    }
    std::fill(out + p_hi * s.q, out + pq, 0.f);
  }
}

// dx (cg x h x w, overwritten) = the sum of every col entry over the input pixel it was read
// from. Gathered per input row (ci, ih), so rows are independent and each sum runs in the
// fixed order (kr, ks, oq).
void col2im(const ConvShape& s, int64_t cg, const float* col, float* dx) {
  const int64_t pq = s.p * s.q;
#pragma omp parallel for schedule(static) if (cg * s.h * s.w > 8192)
  for (int64_t row = 0; row < cg * s.h; ++row) {
    const int64_t ci = row / s.h, ih = row % s.h;
    float* xr = dx + row * s.w;
    std::fill(xr, xr + s.w, 0.f);
    for (int64_t kr = 0; kr < s.r; ++kr) {
      const int64_t t = ih + s.pad_h - kr;  // = op * stride_h
      if (t < 0 || t % s.stride_h) continue;
      const int64_t op = t / s.stride_h;
      if (op >= s.p) continue;
      for (int64_t ks = 0; ks < s.s; ++ks) {
        const float* d = col + ((ci * s.r + kr) * s.s + ks) * pq + op * s.q;
        int64_t q_lo, q_hi;
        valid_outputs(ks, s.pad_w, s.stride_w, s.w, s.q, q_lo, q_hi);
        float* xo = xr + (q_lo * s.stride_w - s.pad_w + ks);
        for (int64_t oq = q_lo; oq < q_hi; ++oq) xo[(oq - q_lo) * s.stride_w] += d[oq];
      }
    }
  }
}

// The im2col buffer, reused across calls by each calling thread.
float* col_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

void conv2d(const ConvShape& s, const float* x, const float* w, const float* b, float* y) {
  const int64_t cg = s.c / s.groups, kg = s.k / s.groups, crs = cg * s.r * s.s, pq = s.p * s.q;
  const bool pointwise = is_pointwise(s);
  float* col = pointwise ? nullptr : col_scratch(crs * pq);
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      const float* xg = x + (n * s.c + g * cg) * s.h * s.w;
      float* yg = y + (n * s.k + g * kg) * pq;
      if (!pointwise) im2col(s, cg, xg, col);
      if (b) {  // start from the bias and accumulate the product onto it
        for (int64_t i = 0; i < kg; ++i) std::fill(yg + i * pq, yg + (i + 1) * pq, b[g * kg + i]);
      }
      gemm(false, false, kg, pq, crs, w + g * kg * crs, crs, pointwise ? xg : col, pq, yg, pq, b != nullptr);
    }
  }
}

void conv2d_backward_data(const ConvShape& s, const float* w, const float* dy, float* dx) {
  const int64_t cg = s.c / s.groups, kg = s.k / s.groups, crs = cg * s.r * s.s, pq = s.p * s.q;
  const bool pointwise = is_pointwise(s);
  float* dcol = pointwise ? nullptr : col_scratch(crs * pq);
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      float* dxg = dx + (n * s.c + g * cg) * s.h * s.w;
      const float* dyg = dy + (n * s.k + g * kg) * pq;
      gemm(true, false, crs, pq, kg, w + g * kg * crs, crs, dyg, pq, pointwise ? dxg : dcol, pq, false);
      if (!pointwise) col2im(s, cg, dcol, dxg);
    }
  }
}

void conv2d_backward_filter(const ConvShape& s, const float* x, const float* dy, float* dw, float* db) {
  const int64_t cg = s.c / s.groups, kg = s.k / s.groups, crs = cg * s.r * s.s, pq = s.p * s.q;
  const bool pointwise = is_pointwise(s);
  if (s.n == 0) std::fill(dw, dw + s.k * crs, 0.f);
  float* col = pointwise ? nullptr : col_scratch(crs * pq);
  for (int64_t n = 0; n < s.n; ++n) {
    for (int64_t g = 0; g < s.groups; ++g) {
      const float* xg = x + (n * s.c + g * cg) * s.h * s.w;
      const float* dyg = dy + (n * s.k + g * kg) * pq;
      if (!pointwise) im2col(s, cg, xg, col);
      gemm(false, true, kg, crs, pq, dyg, pq, pointwise ? xg : col, pq, dw + g * kg * crs, crs, n > 0);
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
