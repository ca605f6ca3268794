// Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions (variant 3, see csrc/cuda/conv.cu): the
// transforms and the index maps, as host-and-device code shared by the CUDA kernels
// (csrc/cuda/conv_winograd.cu) and the CPU emulator (tools/emulate_winograd.cu), so that the
// emulator runs the real code.
//
// The output is cut into 4x4 tiles (tiles_h = ceil(P/4) by tiles_w = ceil(Q/4) per image,
// T = n * tiles_h * tiles_w tiles in all); tile (th, tw) reads the 6x6 input patch whose top-left
// pixel is (4*th - ph, 4*tw - pw), zero outside the image. With the 6x6 transforms
//   U = G g G^T (filter, 3x3 -> 6x6), V = B^T d B (input patch), Y = A^T M A (6x6 -> 4x4)
// a tile of one output channel is Y = A^T [ sum_c U[k,c] (.) V[c] ] A, i.e. for each of the 36
// transformed positions e one GEMM M_e[k][t] = sum_c U_e[k][c] V_e[c][t] per group (run on the
// core in gemm.cuh, batch = groups * 36). Outputs past P, Q are computed and dropped.
// Backward-filter is the adjoint: dU_e[k][c] = sum_t (A dY_t A^T)_e V_e[c][t] (dY tiles zero past
// P, Q), then dw = G^T dU G. Backward-data (stride 1) is the forward of dy with flipped weights.
//
// Interpolation points 0, 1, -1, 1/2, -2 and infinity (Toom-Cook; tools/winograd_points.py
// derives the matrices exactly and compares point sets): in a float32 simulation over 256 input
// channels their error is 2.1e-6 relative (norm-wise; max 4e-6) against 3.2e-6 (max 1.1e-5) for
// Lavin's 0, +-1, +-2 and 0, +-1, +-1/2. The 1/3 and 1/15 of G sit in the filter transforms, which
// are computed once per weight; B^T and A^T are exact in binary.
//
// Workspaces (floats): forward U 36*K*Cg, V 36*C*T, M 36*K*T; backward-filter V, dY^ 36*K*T,
// dU 36*K*Cg: the same total, capped by kMaxWorkspaceBytes (larger problems keep the implicit
// GEMM).
#pragma once
#include "../kernels/conv.h"
#include "dense_operands.cuh"

namespace convnet::cuda::winograd {

constexpr int kOut = 4;        // output tile side
constexpr int kIn = 6;         // input tile side (kOut + 3 - 1)
constexpr int kPos = kIn * kIn;  // transformed positions
constexpr int64_t kMaxWorkspaceBytes = int64_t(1) << 30;

// ---- the transform matrices ----
struct BT {  // 6 x 6
  GEMM_HD float operator()(int i, int j) const {
    constexpr float t[6][6] = {{1.f, -1.5f, -2.f, 1.5f, 1.f, 0.f},  {0.f, -1.f, 0.5f, 2.5f, 1.f, 0.f},
                               {0.f, 1.f, -2.5f, 0.5f, 1.f, 0.f},   {0.f, -2.f, -1.f, 2.f, 1.f, 0.f},
                               {0.f, 0.5f, -1.f, -0.5f, 1.f, 0.f},  {0.f, 1.f, -1.5f, -2.f, 1.5f, 1.f}};
    return t[i][j];
  }
};
struct Gm {  // G: 6 x 3
  GEMM_HD float operator()(int i, int j) const {
    constexpr float t[6][3] = {{1.f, 0.f, 0.f},
                               {1.f / 3, 1.f / 3, 1.f / 3},
                               {-1.f / 3, 1.f / 3, -1.f / 3},
                               {-16.f / 15, -8.f / 15, -4.f / 15},
                               {1.f / 15, -2.f / 15, 4.f / 15},
                               {0.f, 0.f, 1.f}};
    return t[i][j];
  }
};
struct AT {  // 4 x 6
  GEMM_HD float operator()(int i, int j) const {
    constexpr float t[4][6] = {{1.f, 1.f, 1.f, 1.f, 1.f, 0.f},
                               {0.f, 1.f, -1.f, 0.5f, -2.f, 0.f},
                               {0.f, 1.f, 1.f, 0.25f, 4.f, 0.f},
                               {0.f, 1.f, -1.f, 0.125f, -8.f, 1.f}};
    return t[i][j];
  }
};
template <class L>
struct Transposed {
  GEMM_HD float operator()(int i, int j) const { return L()(j, i); }
};

// out = L in L^T with L (O x I) given by coefficients (constants once unrolled: the zero terms
// are skipped at compile time, a multiply by 1 is exact).
template <int O, int I, class L>
GEMM_HD void sandwich(const float (&in)[I][I], float (&out)[O][O]) {
  const L l;
  float half[O][I];  // L in
#pragma unroll
  for (int i = 0; i < O; ++i)
#pragma unroll
    for (int j = 0; j < I; ++j) {
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < I; ++k)
        if (l(i, k) != 0.f) s = fmaf(l(i, k), in[k][j], s);
      half[i][j] = s;
    }
#pragma unroll
  for (int i = 0; i < O; ++i)
#pragma unroll
    for (int j = 0; j < O; ++j) {
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < I; ++k)
        if (l(j, k) != 0.f) s = fmaf(half[i][k], l(j, k), s);
      out[i][j] = s;
    }
}

// ---- shapes ----
struct TileAt {
  int64_t img;
  int th, tw;  // tile row and column in the image
};

struct Tiling {
  int64_t n, C, K, T;  // images, input / output channels (all groups), tiles
  int Cg, Kg, H, W, P, Q, ph, pw, tiles_h, tiles_w, tiles;  // tiles per image
  GEMM_HD TileAt locate(int64_t t) const {  // tile t < T
    const int64_t img = t / tiles;
    const int tile = (int)(t - img * tiles), th = tile / tiles_w;
    return {img, th, tile - th * tiles_w};
  }
};

inline Tiling tiling(const ConvShape& sh) {
  Tiling t{};
  t.n = sh.n, t.C = sh.c, t.K = sh.k;
  t.Cg = (int)(sh.c / sh.groups), t.Kg = (int)(sh.k / sh.groups);
  t.H = (int)sh.h, t.W = (int)sh.w, t.P = (int)sh.p, t.Q = (int)sh.q, t.ph = (int)sh.pad_h, t.pw = (int)sh.pad_w;
  t.tiles_h = (t.P + kOut - 1) / kOut, t.tiles_w = (t.Q + kOut - 1) / kOut;
  t.tiles = t.tiles_h * t.tiles_w;
  t.T = sh.n * t.tiles;
  return t;
}

// Floats of workspace one forward or backward-filter call needs (see above).
inline int64_t workspace_floats(const Tiling& t) {
  return kPos * (t.K * t.Cg + t.C * t.T + t.K * t.T);
}

// Variant 3 takes a conv when it is 3x3, stride 1, padding <= 2, at least 32 input and output
// channels per group (below that the transforms' traffic outweighs the saved multiply-adds) and
// the workspace fits.
inline bool eligible(const ConvShape& sh) {
  if (sh.r != 3 || sh.s != 3 || sh.stride_h != 1 || sh.stride_w != 1 || sh.pad_h < 0 || sh.pad_h > 2 ||
      sh.pad_w < 0 || sh.pad_w > 2 || sh.n < 1 || sh.p < 1 || sh.q < 1)
    return false;
  if (sh.c / sh.groups < 32 || sh.k / sh.groups < 32) return false;
  return workspace_floats(tiling(sh)) * (int64_t)sizeof(float) <= kMaxWorkspaceBytes;
}

// ---- the transformed layout X[g][e][row][col] (the GEMMs' operands, z = g*36 + e) ----
// One (row, col) of group g: its kPos values are `stride` (= rows * cols) apart from here.
GEMM_HD int64_t position_base(int g, int64_t stride, int64_t row_col) { return (int64_t)g * kPos * stride + row_col; }
GEMM_HD void store_positions(float* base, int64_t stride, const float (&v)[kIn][kIn]) {
#pragma unroll
  for (int e = 0; e < kPos; ++e) base[e * stride] = v[e / kIn][e % kIn];
}
GEMM_HD void load_positions(const float* base, int64_t stride, float (&v)[kIn][kIn]) {
#pragma unroll
  for (int e = 0; e < kPos; ++e) v[e / kIn][e % kIn] = GEMM_LDG(base + e * stride);
}

// ---- the per-element steps of the transform kernels (one call per thread and index) ----

// idx < K*Cg: U[g][e][kk][c] = (G w[g*Kg+kk, c] G^T)_e.
struct FilterTransform {
  const float* w;
  float* u;
  int Kg, Cg;
  GEMM_HD void operator()(int64_t idx) const {
    const int64_t k = idx / Cg;
    const int c = (int)(idx - k * Cg), g = (int)(k / Kg), kk = (int)(k - (int64_t)g * Kg);
    float f[3][3], out[kIn][kIn];
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
      for (int j = 0; j < 3; ++j) f[i][j] = w[idx * 9 + i * 3 + j];
    sandwich<kIn, 3, Gm>(f, out);
    const int64_t pos_stride = (int64_t)Kg * Cg;
    store_positions(u + position_base(g, pos_stride, (int64_t)kk * Cg + c), pos_stride, out);
  }
};

// idx < C*T (tile fastest: coalesced stores): V[g][e][c][t] = (B^T d B)_e, d the 6x6 patch of
// channel g*Cg+c of tile t.
struct InputTransform {
  const float* x;
  float* v;
  Tiling s;
  GEMM_HD void operator()(int64_t idx) const {
    const int64_t ch = idx / s.T, t = idx - ch * s.T;
    const TileAt at = s.locate(t);
    const int h0 = at.th * kOut - s.ph, w0 = at.tw * kOut - s.pw;
    const float* plane = x + (at.img * s.C + ch) * s.H * s.W;
    float d[kIn][kIn], out[kIn][kIn];
#pragma unroll
    for (int i = 0; i < kIn; ++i)
#pragma unroll
      for (int j = 0; j < kIn; ++j) {
        const int h = h0 + i, w = w0 + j;
        d[i][j] = ((unsigned)h < (unsigned)s.H && (unsigned)w < (unsigned)s.W) ? GEMM_LDG(plane + h * s.W + w) : 0.f;
      }
    sandwich<kIn, kIn, BT>(d, out);
    const int g = (int)(ch / s.Cg), c = (int)(ch - (int64_t)g * s.Cg);
    const int64_t pos_stride = s.Cg * s.T;
    store_positions(v + position_base(g, pos_stride, c * s.T + t), pos_stride, out);
  }
};

// idx < K*T: y[img, k, tile] = A^T M A (+ bias) from M[g][e][kk][t], clipped to P x Q.
struct OutputTransform {
  const float* m;
  const float* bias;
  float* y;
  Tiling s;
  GEMM_HD void operator()(int64_t idx) const {
    const int64_t k = idx / s.T, t = idx - k * s.T;
    const int g = (int)(k / s.Kg), kk = (int)(k - (int64_t)g * s.Kg);
    const int64_t pos_stride = s.Kg * s.T;
    float in[kIn][kIn], out[kOut][kOut];
    load_positions(m + position_base(g, pos_stride, kk * s.T + t), pos_stride, in);
    sandwich<kOut, kIn, AT>(in, out);
    const TileAt at = s.locate(t);
    const float b = bias ? bias[k] : 0.f;
    float* plane = y + (at.img * s.K + k) * s.P * s.Q;
#pragma unroll
    for (int i = 0; i < kOut; ++i)
#pragma unroll
      for (int j = 0; j < kOut; ++j) {
        const int p = at.th * kOut + i, q = at.tw * kOut + j;
        if (p < s.P && q < s.Q) plane[p * s.Q + q] = out[i][j] + b;
      }
  }
};

// idx < K*T: dY^[g][e][kk][t] = (A dY A^T)_e, dY the 4x4 tile of dy (zero past P, Q).
struct GradOutputTransform {
  const float* dy;
  float* out_hat;
  Tiling s;
  GEMM_HD void operator()(int64_t idx) const {
    const int64_t k = idx / s.T, t = idx - k * s.T;
    const TileAt at = s.locate(t);
    const float* plane = dy + (at.img * s.K + k) * s.P * s.Q;
    float d[kOut][kOut], out[kIn][kIn];
#pragma unroll
    for (int i = 0; i < kOut; ++i)
#pragma unroll
      for (int j = 0; j < kOut; ++j) {
        const int p = at.th * kOut + i, q = at.tw * kOut + j;
        d[i][j] = (p < s.P && q < s.Q) ? GEMM_LDG(plane + p * s.Q + q) : 0.f;
      }
    sandwich<kIn, kOut, Transposed<AT>>(d, out);
    const int g = (int)(k / s.Kg), kk = (int)(k - (int64_t)g * s.Kg);
    const int64_t pos_stride = s.Kg * s.T;
    store_positions(out_hat + position_base(g, pos_stride, kk * s.T + t), pos_stride, out);
  }
};

// idx < K*Cg: dw[g*Kg+kk, c] = G^T dU G from dU[g][e][kk][c].
struct FilterGradTransform {
  const float* du;
  float* dw;
  int Kg, Cg;
  GEMM_HD void operator()(int64_t idx) const {
    const int64_t k = idx / Cg;
    const int c = (int)(idx - k * Cg), g = (int)(k / Kg), kk = (int)(k - (int64_t)g * Kg);
    const int64_t pos_stride = (int64_t)Kg * Cg;
    float in[kIn][kIn], out[3][3];
    load_positions(du + position_base(g, pos_stride, (int64_t)kk * Cg + c), pos_stride, in);
    sandwich<3, kIn, Transposed<Gm>>(in, out);
#pragma unroll
    for (int i = 0; i < 3; ++i)
#pragma unroll
      for (int j = 0; j < 3; ++j) dw[idx * 9 + i * 3 + j] = out[i][j];
  }
};

// ---- the GEMM operands: dense matrices, one per z = g*36 + e ----

// The operands use 32-bit offsets (RowMajorStrided32 says why): a workspace buffer holds
// < 2^28 floats (kMaxWorkspaceBytes).
static_assert(kMaxWorkspaceBytes / 4 < INT32_MAX, "workspace offsets must fit 32 bits");

// Element (mn, k) of matrix z = p[z*zstride + mn*ld + k] (rows contiguous along k).
struct RowsAlongK : MatrixLoader<RowMajorStrided32, Contiguous::K> {};
// Element (mn, k) of matrix z = p[z*zstride + k*ld + mn] (contiguous along mn).
struct RowsAlongMN : MatrixLoader<RowMajorStrided32, Contiguous::MN> {};
// C(m, n) of matrix z -> p[z*zstride + m*ld + n].
struct DenseStore : MatrixStore<RowMajorStrided32> {};

// M_e = U_e V_e per group: batch groups*36, M = Kg, N = T, K = Cg.
using ForwardGemm = Gemm<RowsAlongK, RowsAlongMN, DenseStore, true, false>;
inline ForwardGemm forward_gemm(const Tiling& t, const float* u, const float* v, float* m) {
  const int64_t groups = t.C / t.Cg;
  return {groups * kPos,
          t.Kg,
          t.T,
          t.Cg,
          RowsAlongK{u, t.Kg * t.Cg, t.Cg},
          RowsAlongMN{v, (int)(t.Cg * t.T), (int)t.T},
          DenseStore{m, (int)(t.Kg * t.T), (int)t.T}};
}

// dU_e = dY^_e V_e^T per group: batch groups*36, M = Kg, N = Cg, K = T (split-K over tiles).
using FilterGemm = Gemm<RowsAlongK, RowsAlongK, DenseStore, true, true>;
inline FilterGemm filter_gemm(const Tiling& t, const float* dy_hat, const float* v, float* du) {
  const int64_t groups = t.C / t.Cg;
  return {groups * kPos,
          t.Kg,
          t.Cg,
          t.T,
          RowsAlongK{dy_hat, (int)(t.Kg * t.T), (int)t.T},
          RowsAlongK{v, (int)(t.Cg * t.T), (int)t.T},
          DenseStore{du, t.Kg * t.Cg, t.Cg}};
}

// Host entry points (csrc/cuda/conv_winograd.cu); the caller checked eligible(sh).
void forward(const ConvShape& sh, const float* x, const float* w, const float* b, float* y);
void backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw);

}  // namespace convnet::cuda::winograd
