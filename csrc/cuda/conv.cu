// CUDA twins of the convolution family: every op is an implicit GEMM on the one tiled core in
// gemm.cuh (no im2col buffer, no cuDNN/cuBLAS). Per group g (grid.z), with Cg = c/groups,
// Kg = k/groups, x (n, c, h, w), w (k, Cg, r, s), y/dy (n, k, p, q):
//
//   forward          y[i, gKg+m, p, q] = sum_{c,r,s} w[gKg+m, c, r, s] x[i, gCg+c, p*sh-ph+r, q*sw-pw+s]
//                    M = Kg, N = n*P*Q (pixels), K = Cg*R*S; A = weights (rows contiguous in k),
//                    B = the input gathered im2col-style (consecutive threads: consecutive q).
//   backward-data    dx[i, gCg+c, h, w] = sum over (k, r, s) with p = (h+ph-r)/sh, q = (w+pw-s)/sw
//                    integral and in range of w[gKg+k, c, r, s] dy[i, gKg+k, p, q].
//                    Stride > 1 is split into sh*sw phases (grid.z = g*sh*sw + phase): phase
//                    (ah, aw) covers the pixels h = ah + hh*sh, w = aw + ww*sw, and for those only
//                    r = rh0 + rr*sh (rh0 = (ah+ph) mod sh) contribute, with p = hh + offh - rr
//                    exactly (offh = (ah+ph-rh0)/sh). So no multiply-adds are wasted on the zero
//                    taps of a strided transposed convolution. M = Cg, N = n*ceil(H/sh)*ceil(W/sw),
//                    K = Kg*ceil(R/sh)*ceil(S/sw) (taps past the kernel edge read as 0).
//   backward-filter  dw[gKg+m, c, r, s] = sum_{i,p,q} dy[i, gKg+m, p, q] x[i, gCg+c, p*sh-ph+r, q*sw-pw+s]
//                    M = Kg, N = Cg*R*S, K = n*P*Q: few output tiles and a huge reduction, so
//                    run_gemm splits K (partials in a workspace, summed in a fixed order).
//   bias gradient    channel_sum (channel_sum.cu): fixed-order per-channel reduction.
// All divisions by shape constants in the index maps use FastDiv (multiply-high + shift). The
// element offsets inside one image (c*H*W + h*W + w, k*P*Q + ...) are 32-bit: checked below.
//
// ptxas (sm_90, CUDA 13, -O3; see csrc/cuda/gemm.cuh for the kernel): see the table at the end
// of this comment block, refreshed with CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh.
//   PTXAS_TABLE
#include "../kernels/conv.h"
#include "gemm.cuh"

namespace convnet::cuda {
namespace {

// ---- forward ----

// A(m, k) = w[g*Kg + m][k]: weight rows are contiguous in k = (c, r, s).
struct FwdWeights {
  const float* w;
  int Kg, CRS;
  struct Col {
    bool ok;
    const float* row;
  };
  __device__ Col col(int z, int m) const {
    if (m < 0) return {false, w};
    return {true, w + ((int64_t)z * Kg + m) * CRS};
  }
  __device__ float at(const Col& c, int k) const { return __ldg(c.row + k); }
};

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
  __device__ Col col(int z, int n) const {
    if (n < 0) return {false, x, 0, 0};
    int img = PQ.div(n), pq = PQ.mod(n, img);
    int p = Q.div(pq), q = Q.mod(pq, p);
    return {true, x + img * CHW + (int64_t)z * Cg * H * W, p * sh - ph, q * sw - pw};
  }
  __device__ float at(const Col& c, int k) const {
    int ci = RS.div(k), rs = RS.mod(k, ci);
    int r = S.div(rs), s = S.mod(rs, r);
    int h = c.h0 + r, w = c.w0 + s;
    if ((unsigned)h >= (unsigned)H || (unsigned)w >= (unsigned)W) return 0.f;
    return __ldg(c.base + (ci * H + h) * W + w);
  }
};

// C(m, n = (img, pq)) -> y[img, g*Kg + m, pq] (+ bias).
struct FwdOutput {
  float* y;
  const float* b;
  int64_t K;
  int Kg;
  FastDiv PQ;
  __device__ void operator()(int z, int m, int n, float v) const {
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
__device__ __forceinline__ Phase phase_of(int phase, int sh, int sw, int ph, int pw) {
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
  __device__ Col col(int z, int m) const {
    if (m < 0) return {false, w, 0, 0};
    int g = z / st.phases;
    Phase f = phase_of(z - g * st.phases, st.sh, st.sw, st.ph, st.pw);
    return {true, w + ((int64_t)g * Kg * Cg + m) * R * S, f.rh0, f.rw0};
  }
  __device__ float at(const Col& c, int k) const {
    int kk = RpSp.div(k), t = RpSp.mod(k, kk);
    int rr = Sp.div(t), ss = Sp.mod(t, rr);
    int r = c.rh0 + rr * st.sh, s = c.rw0 + ss * st.sw;
    if (r >= R || s >= S) return 0.f;
    return __ldg(c.base + ((int64_t)kk * Cg * R + r) * S + s);
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
  __device__ Col col(int z, int n) const {
    if (n < 0) return {false, dy, 0, 0};
    int g = z / st.phases;
    Phase f = phase_of(z - g * st.phases, st.sh, st.sw, st.ph, st.pw);
    int img = HpWp.div(n), t = HpWp.mod(n, img);
    int hh = Wp.div(t), ww = Wp.mod(t, hh);
    if (f.ah + hh * st.sh >= H || f.aw + ww * st.sw >= W) return {false, dy, 0, 0};
    return {true, dy + img * KPQ + (int64_t)g * Kg * P * Q, hh + f.offh, ww + f.offw};
  }
  __device__ float at(const Col& c, int k) const {
    int kk = RpSp.div(k), t = RpSp.mod(k, kk);
    int rr = Sp.div(t), ss = Sp.mod(t, rr);
    int p = c.p0 - rr, q = c.q0 - ss;
    if ((unsigned)p >= (unsigned)P || (unsigned)q >= (unsigned)Q) return 0.f;
    return __ldg(c.base + (kk * P + p) * Q + q);
  }
};

// C(m = c, n = (img, hh, ww)) -> dx[img, g*Cg + c, ah + hh*sh, aw + ww*sw] (pixels of the phase only).
struct BwdDataOutput {
  float* dx;
  Strides st;
  int64_t CHW;
  int Cg, H, W;
  FastDiv HpWp, Wp;
  __device__ void operator()(int z, int m, int n, float v) const {
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
  __device__ Col col(int z, int m) const {
    if (m < 0) return {false, dy};
    return {true, dy + ((int64_t)z * Kg + m) * PQ.d};
  }
  __device__ float at(const Col& c, int k) const {
    int img = PQ.div(k), pq = PQ.mod(k, img);
    return __ldg(c.base + img * KPQ + pq);
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
  __device__ Col col(int z, int n) const {
    if (n < 0) return {false, x, 0, 0};
    int c = RS.div(n), rs = RS.mod(n, c);
    int r = S.div(rs), s = S.mod(rs, r);
    return {true, x + ((int64_t)z * Cg + c) * H * W, r - ph, s - pw};
  }
  __device__ float at(const Col& c, int k) const {
    int img = PQ.div(k), pq = PQ.mod(k, img);
    int p = Q.div(pq), q = Q.mod(pq, p);
    int h = p * sh + c.roff, w = q * sw + c.soff;
    if ((unsigned)h >= (unsigned)H || (unsigned)w >= (unsigned)W) return 0.f;
    return __ldg(c.base + img * CHW + h * W + w);
  }
};

// C(m, n) -> dw[g*Kg + m, n], n = (c, r, s).
struct BwdFilterOutput {
  float* dw;
  int Kg, CRS;
  __device__ void operator()(int z, int m, int n, float v) const {
    dw[((int64_t)z * Kg + m) * CRS + n] = v;
  }
};

// The per-image offsets (and the GEMM sizes) are 32-bit.
void check_sizes(const ConvShape& sh) {
  CHECK_VALUE(sh.c * sh.h * sh.w < INT32_MAX && sh.k * sh.p * sh.q < INT32_MAX &&
                  sh.k * sh.c * sh.r * sh.s < INT32_MAX,
              "tensors too large for the CUDA kernels' 32-bit per-image indexing");
}

}  // namespace

void conv2d(const ConvShape& sh, const float* x, const float* w, const float* b, float* y) {
  check_sizes(sh);
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups, PQ = sh.p * sh.q;
  FwdWeights a{w, (int)Kg, (int)(Cg * sh.r * sh.s)};
  FwdInput bx{x, sh.c * sh.h * sh.w, (int)Cg, (int)sh.h, (int)sh.w, (int)sh.stride_h, (int)sh.stride_w,
              (int)sh.pad_h, (int)sh.pad_w, FastDiv(sh.r * sh.s), FastDiv(sh.s), FastDiv(PQ), FastDiv(sh.q)};
  FwdOutput out{y, b, sh.k, (int)Kg, FastDiv(PQ)};
  run_gemm<true, false>(sh.groups, Kg, sh.n * PQ, Cg * sh.r * sh.s, a, bx, out, "conv2d forward");
}

void conv2d_backward_data(const ConvShape& sh, const float* w, const float* dy, float* dx) {
  check_sizes(sh);
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups;
  const int64_t Rp = (sh.r + sh.stride_h - 1) / sh.stride_h, Sp = (sh.s + sh.stride_w - 1) / sh.stride_w;
  const int64_t Hp = (sh.h + sh.stride_h - 1) / sh.stride_h, Wp = (sh.w + sh.stride_w - 1) / sh.stride_w;
  Strides st{(int)sh.stride_h, (int)sh.stride_w, (int)sh.pad_h, (int)sh.pad_w, (int)(sh.stride_h * sh.stride_w)};
  BwdDataWeights a{w, st, (int)Kg, (int)Cg, (int)sh.r, (int)sh.s, FastDiv(Rp * Sp), FastDiv(Sp)};
  BwdDataGrad bg{dy, st, sh.k * sh.p * sh.q, (int)Kg, (int)sh.p, (int)sh.q, (int)sh.h, (int)sh.w,
                 FastDiv(Rp * Sp), FastDiv(Sp), FastDiv(Hp * Wp), FastDiv(Wp)};
  BwdDataOutput out{dx, st, sh.c * sh.h * sh.w, (int)Cg, (int)sh.h, (int)sh.w, FastDiv(Hp * Wp), FastDiv(Wp)};
  run_gemm<true, false>(sh.groups * st.phases, Cg, sh.n * Hp * Wp, Kg * Rp * Sp, a, bg, out,
                        "conv2d backward-data");
}

void conv2d_backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw, float* db) {
  check_sizes(sh);
  const int64_t Cg = sh.c / sh.groups, Kg = sh.k / sh.groups, PQ = sh.p * sh.q;
  BwdFilterGrad a{dy, sh.k * PQ, (int)Kg, FastDiv(PQ)};
  BwdFilterInput bx{x, sh.c * sh.h * sh.w, (int)Cg, (int)sh.h, (int)sh.w, (int)sh.stride_h, (int)sh.stride_w,
                    (int)sh.pad_h, (int)sh.pad_w, FastDiv(sh.r * sh.s), FastDiv(sh.s), FastDiv(PQ), FastDiv(sh.q)};
  BwdFilterOutput out{dw, (int)Kg, (int)(Cg * sh.r * sh.s)};
  run_gemm<true, true>(sh.groups, Kg, Cg * sh.r * sh.s, sh.n * PQ, a, bx, out, "conv2d backward-filter");
  if (db) channel_sum(dy, sh.n, sh.k, PQ, db);
}

}  // namespace convnet::cuda
