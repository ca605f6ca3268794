// The index maps that turn each conv op into a GEMM for gemm.cuh (see csrc/cuda/conv.cu for the
// math), and the builders that set them up from a ConvShape. Host-and-device code, so that
// tools/emulate_gemm.cu can run the real maps through the real kernel steps on the CPU.
#pragma once
#include "../kernels/conv.h"
#include "dense_operands.cuh"

namespace convnet::cuda::conv_gemm {


// ---- forward ----

// A(m, k) = w[g*Kg + m][k]: weight rows are contiguous in k = (c, r, s). Layout: rows Kg, ld CRS.
struct FwdWeights : MatrixLoader<RowMajorStack, Contiguous::K> {};

// B(k = (c, r, s), n = (img, p, q)) = x[img, g*Cg + c, p*sh - ph + r, q*sw - pw + s], 0 in the padding.
struct FwdInput {
  const float* x;
  int64_t CHW;
  int Cg, H, W, sh, sw, ph, pw;
  FastDiv RS, S, PQ, Q;
  struct Col {
    bool ok;
    const float* base;  // image img, first channel of group g
    int h0, w0;         // top-left input pixel of the window
  };
  GEMM_HD Col col(int z, int n) const {
    if (n < 0) return {false, x, 0, 0};
    int img = PQ.div(n), pq = PQ.mod(n, img);
    int p = Q.div(pq), q = Q.mod(pq, p);
    return {true, x + img * CHW + (int64_t)z * Cg * H * W, p * sh - ph, q * sw - pw};
  }
  GEMM_HD float at(const Col& c, int k) const {
    int ci = RS.div(k), rs = RS.mod(k, ci);
    int r = S.div(rs), s = S.mod(rs, r);
    int h = c.h0 + r, w = c.w0 + s;
    if ((unsigned)h >= (unsigned)H || (unsigned)w >= (unsigned)W) return 0.f;
    return GEMM_LDG(c.base + (ci * H + h) * W + w);
  }
  GEMM_HD const float* ptr(const Col& c, int k) const {
    int ci = RS.div(k), rs = RS.mod(k, ci);
    int r = S.div(rs), s = S.mod(rs, r);
    int h = c.h0 + r, w = c.w0 + s;
    if ((unsigned)h >= (unsigned)H || (unsigned)w >= (unsigned)W) return nullptr;
    return c.base + (ci * H + h) * W + w;
  }
};

// C(m, n = (img, pq)) -> y[img, g*Kg + m, pq] (+ bias).
struct FwdOutput {
  float* y;
  const float* b;
  int64_t K;
  int Kg;
  FastDiv PQ;
  GEMM_HD void operator()(int z, int m, int n, float v) const {
    int img = PQ.div(n), pq = PQ.mod(n, img);
    int ch = z * Kg + m;
    y[((int64_t)img * K + ch) * PQ.d + pq] = b ? v + b[ch] : v;
  }
};

// ---- backward-data (see the phase decomposition above) ----

struct Phase {
  int ah, aw;    // residue of h mod sh, w mod sw covered by this phase
  int rh0, rw0;  // first kernel tap that lands on such pixels
  int offh, offw;
};
GEMM_HD Phase phase_of(int phase, int sh, int sw, int ph, int pw) {
  Phase f;
  f.ah = phase / sw;
  f.aw = phase - f.ah * sw;
  f.rh0 = (f.ah + ph) % sh;
  f.rw0 = (f.aw + pw) % sw;
  f.offh = (f.ah + ph - f.rh0) / sh;
  f.offw = (f.aw + pw - f.rw0) / sw;
  return f;
}

struct Strides {
  int sh, sw, ph, pw, phases;  // phases = sh * sw
};

// A(m = c, k = (kk, rr, ss)) = w[g*Kg + kk, c, rh0 + rr*sh, rw0 + ss*sw], 0 past the kernel edge.
struct BwdDataWeights {
  const float* w;
  Strides st;
  int Kg, Cg, R, S;
  FastDiv RpSp, Sp;
  struct Col {
    bool ok;
    const float* base;  // w[g*Kg, c, 0, 0]
    int rh0, rw0;
  };
  GEMM_HD Col col(int z, int m) const {
    if (m < 0) return {false, w, 0, 0};
    int g = z / st.phases;
    Phase f = phase_of(z - g * st.phases, st.sh, st.sw, st.ph, st.pw);
    return {true, w + ((int64_t)g * Kg * Cg + m) * R * S, f.rh0, f.rw0};
  }
  GEMM_HD float at(const Col& c, int k) const {
    int kk = RpSp.div(k), t = RpSp.mod(k, kk);
    int rr = Sp.div(t), ss = Sp.mod(t, rr);
    int r = c.rh0 + rr * st.sh, s = c.rw0 + ss * st.sw;
    if (r >= R || s >= S) return 0.f;
    return GEMM_LDG(c.base + ((int64_t)kk * Cg * R + r) * S + s);
  }
  GEMM_HD const float* ptr(const Col& c, int k) const {
    int kk = RpSp.div(k), t = RpSp.mod(k, kk);
    int rr = Sp.div(t), ss = Sp.mod(t, rr);
    int r = c.rh0 + rr * st.sh, s = c.rw0 + ss * st.sw;
    if (r >= R || s >= S) return nullptr;
    return c.base + ((int64_t)kk * Cg * R + r) * S + s;
  }
};

// B(k = (kk, rr, ss), n = (img, hh, ww)) = dy[img, g*Kg + kk, hh + offh - rr, ww + offw - ss], 0 outside.
struct BwdDataGrad {
  const float* dy;
  Strides st;
  int64_t KPQ;
  int Kg, P, Q, H, W;
  FastDiv RpSp, Sp, HpWp, Wp;
  struct Col {
    bool ok;
    const float* base;  // dy[img, g*Kg, 0, 0]
    int p0, q0;
  };
  GEMM_HD Col col(int z, int n) const {
    if (n < 0) return {false, dy, 0, 0};
    int g = z / st.phases;
    Phase f = phase_of(z - g * st.phases, st.sh, st.sw, st.ph, st.pw);
    int img = HpWp.div(n), t = HpWp.mod(n, img);
    int hh = Wp.div(t), ww = Wp.mod(t, hh);
    if (f.ah + hh * st.sh >= H || f.aw + ww * st.sw >= W) return {false, dy, 0, 0};
    return {true, dy + img * KPQ + (int64_t)g * Kg * P * Q, hh + f.offh, ww + f.offw};
  }
  GEMM_HD float at(const Col& c, int k) const {
    int kk = RpSp.div(k), t = RpSp.mod(k, kk);
    int rr = Sp.div(t), ss = Sp.mod(t, rr);
    int p = c.p0 - rr, q = c.q0 - ss;
    if ((unsigned)p >= (unsigned)P || (unsigned)q >= (unsigned)Q) return 0.f;
    return GEMM_LDG(c.base + (kk * P + p) * Q + q);
  }
  GEMM_HD const float* ptr(const Col& c, int k) const {
    int kk = RpSp.div(k), t = RpSp.mod(k, kk);
    int rr = Sp.div(t), ss = Sp.mod(t, rr);
    int p = c.p0 - rr, q = c.q0 - ss;
    if ((unsigned)p >= (unsigned)P || (unsigned)q >= (unsigned)Q) return nullptr;
    return c.base + (kk * P + p) * Q + q;
  }
};

// C(m = c, n = (img, hh, ww)) -> dx[img, g*Cg + c, ah + hh*sh, aw + ww*sw] (pixels of the phase only).
struct BwdDataOutput {
  float* dx;
  Strides st;
  int64_t CHW;
  int Cg, H, W;
  FastDiv HpWp, Wp;
  GEMM_HD void operator()(int z, int m, int n, float v) const {
    int g = z / st.phases, phase = z - g * st.phases;
    int ah = phase / st.sw, aw = phase - ah * st.sw;
    int img = HpWp.div(n), t = HpWp.mod(n, img);
    int hh = Wp.div(t), ww = Wp.mod(t, hh);
    int h = ah + hh * st.sh, w = aw + ww * st.sw;
    if (h < H && w < W) dx[img * CHW + ((int64_t)(g * Cg + m) * H + h) * W + w] = v;
  }
};

// ---- backward-filter ----

// A(m, k = (img, pq)) = dy[img, g*Kg + m, pq].
struct BwdFilterGrad {
  const float* dy;
  int64_t KPQ;
  int Kg;
  FastDiv PQ;
  struct Col {
    bool ok;
    const float* base;
  };
  GEMM_HD Col col(int z, int m) const {
    if (m < 0) return {false, dy};
    return {true, dy + ((int64_t)z * Kg + m) * PQ.d};
  }
  GEMM_HD float at(const Col& c, int k) const {
    int img = PQ.div(k), pq = PQ.mod(k, img);
    return GEMM_LDG(c.base + img * KPQ + pq);
  }
  GEMM_HD const float* ptr(const Col& c, int k) const {
    int img = PQ.div(k), pq = PQ.mod(k, img);
    return c.base + img * KPQ + pq;
  }
};

// B(k = (img, p, q), n = (c, r, s)) = x[img, g*Cg + c, p*sh - ph + r, q*sw - pw + s], 0 in the padding.
struct BwdFilterInput {
  const float* x;
  int64_t CHW;
  int Cg, H, W, sh, sw, ph, pw;
  FastDiv RS, S, PQ, Q;
  struct Col {
    bool ok;
    const float* base;  // x[0, g*Cg + c, 0, 0]
    int roff, soff;     // r - ph, s - pw
  };
  GEMM_HD Col col(int z, int n) const {
    if (n < 0) return {false, x, 0, 0};
    int c = RS.div(n), rs = RS.mod(n, c);
    int r = S.div(rs), s = S.mod(rs, r);
    return {true, x + ((int64_t)z * Cg + c) * H * W, r - ph, s - pw};
  }
  GEMM_HD float at(const Col& c, int k) const {
    int img = PQ.div(k), pq = PQ.mod(k, img);
    int p = Q.div(pq), q = Q.mod(pq, p);
    int h = p * sh + c.roff, w = q * sw + c.soff;
    if ((unsigned)h >= (unsigned)H || (unsigned)w >= (unsigned)W) return 0.f;
    return GEMM_LDG(c.base + img * CHW + h * W + w);
  }
  GEMM_HD const float* ptr(const Col& c, int k) const {
    int img = PQ.div(k), pq = PQ.mod(k, img);
    int p = Q.div(pq), q = Q.mod(pq, p);
    int h = p * sh + c.roff, w = q * sw + c.soff;
    if ((unsigned)h >= (unsigned)H || (unsigned)w >= (unsigned)W) return nullptr;
    return c.base + img * CHW + h * W + w;
  }
};

// C(m, n) -> dw[g*Kg + m, n], n = (c, r, s). Layout: rows Kg, ld CRS.
struct BwdFilterOutput : MatrixStore<RowMajorStack> {};

// ---- backward-data for few input channels: columns, then a gather (col2im) ----
// With Cg tiny (conv1: 3) the phase GEMM above has M = Cg, so every gathered dy element feeds
// only Cg multiply-adds. Instead: cols[g][(c, r, s)][(img, p, q)] = sum_kk w[g*Kg + kk, c, r, s]
// dy[img, g*Kg + kk, p, q] (a dense GEMM, M = Cg*R*S, N = images*P*Q, K = Kg), then each dx
// element gathers its taps from cols (col2im_element), for a chunk of images at a time.

// A(m = (c, r, s), k = kk) = w[g*Kg + kk][m]: contiguous along m. Layout: rows Kg, ld CRS.
struct ColsWeights : MatrixLoader<RowMajorStack, Contiguous::MN> {};

// B(k = kk, n = (i, pq)) = dy[img0 + i, g*Kg + kk, pq]: contiguous along n within an image.
struct ColsGrad {
  const float* dy;
  int64_t KPQ;
  int Kg, img0;
  FastDiv PQ;
  struct Col {
    bool ok;
    const float* base;
  };
  GEMM_HD Col col(int z, int n) const {
    if (n < 0) return {false, dy};
    int i = PQ.div(n), pq = PQ.mod(n, i);
    return {true, dy + (int64_t)(img0 + i) * KPQ + (int64_t)z * Kg * PQ.d + pq};
  }
  GEMM_HD float at(const Col& c, int k) const { return GEMM_LDG(c.base + (int64_t)k * PQ.d); }
  GEMM_HD const float* ptr(const Col& c, int k) const { return c.base + (int64_t)k * PQ.d; }
};

// C(m, n) -> cols[(g*CRS + m) * Nc + n]. Not a MatrixStore: its int and int64 members (padding
// between them) inside a layout struct changed the SASS of gemm_reduce_kernel<ColsOutput>.
struct ColsOutput {
  float* cols;
  int CRS;
  int64_t Nc;
  GEMM_HD void operator()(int z, int m, int n, float v) const { cols[((int64_t)z * CRS + m) * Nc + n] = v; }
};

// dx[img0 + i, ch, h, w] from the columns of its chunk: the taps r = (h+ph) mod sh, + sh, ...
// with 0 <= p = (h+ph-r)/sh < P (and likewise s, q), in that fixed order.
struct Col2im {
  const float* cols;
  int64_t Nc;  // columns per row of cols: images in the chunk * P * Q
  int Cg, R, S, P, Q, sh, sw, ph, pw;
  GEMM_HD float operator()(int i, int ch, int h, int w) const {
    const int g = ch / Cg, c = ch - g * Cg;
    const float* base = cols + ((int64_t)g * Cg + c) * R * S * Nc + (int64_t)i * P * Q;
    float sum = 0.f;
    for (int r = (h + ph) % sh; r < R && r <= h + ph; r += sh) {
      const int p = (h + ph - r) / sh;
      if (p >= P) continue;
      for (int s = (w + pw) % sw; s < S && s <= w + pw; s += sw) {
        const int q = (w + pw - s) / sw;
        if (q >= Q) continue;
        sum += base[(int64_t)(r * S + s) * Nc + p * Q + q];
      }
    }
    return sum;
  }
};

// ---- backward-data, stride 1, variant 1: a forward conv of dy with flipped weights ----
// With stride 1, dx[i, gCg+c, h, w] = sum_{kk, r', s'} wf[gCg+c, kk, r', s'] dy[i, gKg+kk, h-(R-1-ph)+r', w-(S-1-pw)+s']
// where wf[gCg+c, kk, r', s'] = w[gKg+kk, c, R-1-r', S-1-s']: the forward conv of dy (channels K,
// groups unchanged) with weights wf (C, Kg, R, S), padding (R-1-ph, S-1-pw), output H x W. So it
// runs on the forward GEMM (128 registers, 2 blocks/SM) instead of the phase GEMM (167, 1/SM).

// wf[e] for e < C*Kg*R*S (C = groups*Cg rows of Kg*R*S).
struct FlippedWeight {
  const float* w;
  int Cg, Kg, R, S;
  GEMM_HD float operator()(int e) const {
    const int RS = R * S, row = e / (Kg * RS), t = e - row * (Kg * RS);
    const int kk = t / RS, rs = t - kk * RS, r = rs / S, s = rs - r * S;
    const int g = row / Cg, c = row - g * Cg;
    return w[(((int64_t)g * Kg + kk) * Cg + c) * RS + (R - 1 - r) * S + (S - 1 - s)];
  }
};

// Whether backward_data_flipped applies: stride 1 and padding < kernel (non-negative new padding).
inline bool backward_data_via_flip(const ConvShape& sh) {
  return sh.stride_h == 1 && sh.stride_w == 1 && sh.pad_h < sh.r && sh.pad_w < sh.s;
}

// The forward conv computing dx from dy and wf (see above).
inline ConvShape flipped_shape(const ConvShape& sh) {
  ConvShape t{};
  t.n = sh.n, t.c = sh.k, t.h = sh.p, t.w = sh.q;
  t.k = sh.c, t.r = sh.r, t.s = sh.s;
  t.stride_h = 1, t.stride_w = 1, t.pad_h = sh.r - 1 - sh.pad_h, t.pad_w = sh.s - 1 - sh.pad_w;
  t.groups = sh.groups;
  t.p = sh.h, t.q = sh.w;  // = P + R - 1 - 2ph = H with stride 1
  return t;
}

// ---- the three GEMMs of a conv layer ----

using Forward = Gemm<FwdWeights, FwdInput, FwdOutput, true, false>;
// Its per-thread column state (phase offsets) does not fit 128 registers without spilling.
using BackwardData = Gemm<BwdDataWeights, BwdDataGrad, BwdDataOutput, true, false, BigTileWide>;
using BackwardFilter = Gemm<BwdFilterGrad, BwdFilterInput, BwdFilterOutput, true, true>;

inline Forward forward(const ConvShape& sh, const float* x, const float* w, const float* b, float* y) {
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups, PQ = sh.p * sh.q;
  FwdWeights a{w, (int)Kg, (int)(Cg * sh.r * sh.s)};
  FwdInput bx{x, sh.c * sh.h * sh.w, (int)Cg, (int)sh.h, (int)sh.w, (int)sh.stride_h, (int)sh.stride_w,
              (int)sh.pad_h, (int)sh.pad_w, FastDiv(sh.r * sh.s), FastDiv(sh.s), FastDiv(PQ), FastDiv(sh.q)};
  FwdOutput out{y, b, sh.k, (int)Kg, FastDiv(PQ)};
  return {sh.groups, Kg, sh.n * PQ, Cg * sh.r * sh.s, a, bx, out};
}

inline BackwardData backward_data(const ConvShape& sh, const float* w, const float* dy, float* dx) {
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups;
  const int64_t Rp = (sh.r + sh.stride_h - 1) / sh.stride_h, Sp = (sh.s + sh.stride_w - 1) / sh.stride_w;
  const int64_t Hp = (sh.h + sh.stride_h - 1) / sh.stride_h, Wp = (sh.w + sh.stride_w - 1) / sh.stride_w;
  Strides st{(int)sh.stride_h, (int)sh.stride_w, (int)sh.pad_h, (int)sh.pad_w, (int)(sh.stride_h * sh.stride_w)};
  BwdDataWeights a{w, st, (int)Kg, (int)Cg, (int)sh.r, (int)sh.s, FastDiv(Rp * Sp), FastDiv(Sp)};
  BwdDataGrad bg{dy, st, sh.k * sh.p * sh.q, (int)Kg, (int)sh.p, (int)sh.q, (int)sh.h, (int)sh.w,
                 FastDiv(Rp * Sp), FastDiv(Sp), FastDiv(Hp * Wp), FastDiv(Wp)};
  BwdDataOutput out{dx, st, sh.c * sh.h * sh.w, (int)Cg, (int)sh.h, (int)sh.w, FastDiv(Hp * Wp), FastDiv(Wp)};
  return {sh.groups * st.phases, Cg, sh.n * Hp * Wp, Kg * Rp * Sp, a, bg, out};
}

inline BackwardFilter backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw) {
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups, PQ = sh.p * sh.q;
  BwdFilterGrad a{dy, sh.k * PQ, (int)Kg, FastDiv(PQ)};
  BwdFilterInput bx{x, sh.c * sh.h * sh.w, (int)Cg, (int)sh.h, (int)sh.w, (int)sh.stride_h, (int)sh.stride_w,
                    (int)sh.pad_h, (int)sh.pad_w, FastDiv(sh.r * sh.s), FastDiv(sh.s), FastDiv(PQ), FastDiv(sh.q)};
  BwdFilterOutput out{dw, (int)Kg, (int)(Cg * sh.r * sh.s)};
  return {sh.groups, Kg, Cg * sh.r * sh.s, sh.n * PQ, a, bx, out};
}

// Backward-data goes through columns when the input has few channels per group (see above).
// Also for many stride phases: the phase GEMM batches groups * stride_h * stride_w (grid.z, and an
// int phase count: a stride of 65536 x 65536 wrapped it to 0, leaving dx unwritten), and a phase
// holds a pixel or two once the stride is large.
inline bool backward_data_via_columns(const ConvShape& sh) {
  return sh.c / sh.groups <= ThinTile::BM || sh.groups * sh.stride_h * sh.stride_w > 1024;
}

// Images per chunk of the column path: its workspace stays under about 256 MB.
inline int64_t columns_chunk(const ConvShape& sh) {
  const int64_t per_image = sh.c * sh.r * sh.s * sh.p * sh.q;  // groups * Cg*R*S * P*Q floats
  int64_t chunk = (int64_t(64) << 20) / (per_image > 0 ? per_image : 1);
  if (chunk < 1) chunk = 1;
  return chunk < sh.n ? chunk : sh.n;
}

using Columns = Gemm<ColsWeights, ColsGrad, ColsOutput, false, false>;

// The columns of images [img0, img0 + images) into cols (groups * Cg*R*S rows of images*P*Q).
inline Columns backward_data_columns(const ConvShape& sh, const float* w, const float* dy, int64_t img0,
                                     int64_t images, float* cols) {
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups, PQ = sh.p * sh.q, CRS = Cg * sh.r * sh.s;
  ColsWeights a{w, (int)Kg, (int)CRS};
  ColsGrad b{dy, sh.k * PQ, (int)Kg, (int)img0, FastDiv(PQ)};
  ColsOutput out{cols, (int)CRS, images * PQ};
  return {sh.groups, CRS, images * PQ, Kg, a, b, out};
}

inline Col2im backward_data_col2im(const ConvShape& sh, const float* cols, int64_t images) {
  return {cols, images * sh.p * sh.q, (int)(sh.c / sh.groups), (int)sh.r, (int)sh.s, (int)sh.p, (int)sh.q,
          (int)sh.stride_h, (int)sh.stride_w, (int)sh.pad_h, (int)sh.pad_w};
}

}  // namespace convnet::cuda::conv_gemm
