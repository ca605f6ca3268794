// FFT backward-filter for stride-1 convolutions with large kernels on small planes (variant 5,
// see csrc/cuda/conv.cu; AlexNet's conv2: 5x5 on 27x27, padding 2): the math, the layouts and
// the per-thread steps, as host-and-device code shared by the CUDA kernels (conv_fft.cu) and the
// CPU emulator (tools/emulate_fft.cu), so that the emulator runs the real code.
//
// Why: conv2's filter gradient is 57 GFLOP as an implicit GEMM (M = Kg = 128, N = Cg*25 = 1200,
// K = n*729), ~2.2 ms on an H200 at our GEMM core's ~26 TFLOP/s, against ~0.5 ms for cuDNN.
// A 5x5 Winograd small enough to stay accurate in float32 (6x6 or 7x7 tiles) moves 1.4-2.5 GB of
// transformed tiles; the 8x8 and 9x9 ones lose 1-2 more decimal digits (2e-5 and 1e-4 relative
// against 2e-6 for F(4x4, 3x3), in a float32 simulation). FFT is exact up to float32 rounding
// and its transformed planes are small: 32 x 17 complex values per 27x27 plane.
//
// dw[k, c, r, s] = sum over images and (p, q) of dy[k][p, q] x[c][p + r - ph, q + s - pw] is, per
// image, a correlation of the input plane (placed at (ph, pw) in a 32x32 zero frame: xp) with the
// output-gradient plane (at (0, 0): dyp). With X = DFT(xp), D = DFT(dyp) (unnormalised, 32x32)
//   dw[k, c, r, s] = 1/1024 sum_f e^{+2 pi i (f1 r + f2 s)/32} sum_images conj(D_k[f]) X_c[f],
// exact (no wrap-around) when H + 2ph <= 32 and W + 2pw <= 32, since then p + r <= 31. The inner
// sum is, for each frequency f and group, a complex matrix product P_f = D_f^H X_f
// (Kg x Cg, reduced over the images), run on the real GEMM core (gemm.cuh) as
//   [ Pr ]   [ Xr  Xi ]   [ Dr  Di ]^T        rows c and Cg + c of the A operand, K = 2n
//   [ Pi ] = [ Xi -Xr ] . [ ...    ]          (the images' real parts, then their imaginary parts)
// i.e. M = 2Cg, N = Kg, K = 2n per (f, group): 544 * groups products. The input planes are real,
// so only f2 = 0..16 are kept (Hermitian symmetry); the inverse transform evaluates the 32x32
// inverse DFT at the R x S taps only, counting the columns f2 = 1..15 twice.
//
// Steps (each a kernel): spectra of the input planes (X, written twice as above) and of the
// output-gradient planes (D), the GEMM, and the inverse at the taps. Workspace (floats):
// 544 * (2C * 2n + K * 2n + 2 Kg * C); conv2 at batch 128: 303 MB.
#pragma once
#include "../kernels/conv.h"
#include "gemm.cuh"
#include "winograd.cuh"  // RowsAlongK, DenseStore: the dense GEMM operands

namespace convnet::cuda::fft {

constexpr int kL = 32;                 // DFT side
constexpr int kF2 = kL / 2 + 1;        // columns kept of a real plane's spectrum
constexpr int kFreq = kL * kF2;        // 544 frequencies
constexpr int kPlanes = 8;             // planes per block of the spectrum kernel
constexpr int kLoadPlanes = 4;         // planes whose loads a warp has in flight together (step 1)
constexpr int kRowThreads = kPlanes * kL / 2;  // 128: one thread per pair of rows
constexpr int kThreads = kPlanes * kF2;        // 136: one thread per kept column
constexpr int64_t kMaxWorkspaceBytes = int64_t(1) << 30;
static_assert(kRowThreads <= kThreads, "the row step runs on the first kRowThreads threads");
static_assert(kThreads % kPlanes == 0, "the store step keeps one plane per thread");
static_assert(kPlanes % kLoadPlanes == 0, "the load step takes the planes kLoadPlanes at a time");

// cos and sin of 2 pi j / 32 (j < 32), correctly rounded to float.
GEMM_HD float cos32(int j) {
  constexpr float t[kL] = {1.f,          0.98078528f,  0.923879533f,  0.831469612f,  0.707106781f,  0.555570233f,
                           0.382683432f, 0.195090322f, 0.f,           -0.195090322f, -0.382683432f, -0.555570233f,
                           -0.707106781f, -0.831469612f, -0.923879533f, -0.98078528f,  -1.f,          -0.98078528f,
                           -0.923879533f, -0.831469612f, -0.707106781f, -0.555570233f, -0.382683432f, -0.195090322f,
                           0.f,          0.195090322f, 0.382683432f,  0.555570233f,  0.707106781f,  0.831469612f,
                           0.923879533f, 0.98078528f};
  return t[j];
}
GEMM_HD float sin32(int j) { return cos32((j + 24) & (kL - 1)); }  // sin(a) = cos(a - pi/2)

// In place: v[f] = sum_j v[j] e^{-2 pi i f j / 32}. Radix-2 decimation in time, fully unrolled so
// every index and twiddle is a compile-time constant (the arrays stay in registers).
GEMM_HD void dft32(float (&re)[kL], float (&im)[kL]) {
#pragma unroll
  for (int i = 0; i < kL; ++i) {
    const int j = ((i & 1) << 4) | ((i & 2) << 2) | (i & 4) | ((i & 8) >> 2) | ((i & 16) >> 4);  // bit reversal
    if (i < j) {
      const float tr = re[i], ti = im[i];
      re[i] = re[j], im[i] = im[j], re[j] = tr, im[j] = ti;
    }
  }
#pragma unroll
  for (int half = 1; half < kL; half *= 2)
#pragma unroll
    for (int j = 0; j < half; ++j) {
      const int tw = j * (kL / 2 / half);  // w = e^{-2 pi i tw / 32}
      const float c = cos32(tw), s = -sin32(tw);
#pragma unroll
      for (int i = j; i < kL; i += 2 * half) {
        const int k = i + half;
        float tr, ti;  // w * v[k]
        if (tw == 0) {
          tr = re[k], ti = im[k];
        } else if (tw == kL / 4) {  // w = -i
          tr = im[k], ti = -re[k];
        } else {
          tr = re[k] * c - im[k] * s, ti = re[k] * s + im[k] * c;
        }
        re[k] = re[i] - tr, im[k] = im[i] - ti;
        re[i] += tr, im[i] += ti;
      }
    }
}

// ---- shapes ----
struct Layout {
  int64_t n, C, K;  // images, input and output channels (all groups)
  int groups, Cg, Kg, H, W, P, Q, ph, pw, R, S;
};

inline Layout layout(const ConvShape& sh) {
  Layout t{};
  t.n = sh.n, t.C = sh.c, t.K = sh.k, t.groups = (int)sh.groups;
  t.Cg = (int)(sh.c / sh.groups), t.Kg = (int)(sh.k / sh.groups);
  t.H = (int)sh.h, t.W = (int)sh.w, t.P = (int)sh.p, t.Q = (int)sh.q;
  t.ph = (int)sh.pad_h, t.pw = (int)sh.pad_w, t.R = (int)sh.r, t.S = (int)sh.s;
  return t;
}

// Floats of each workspace part: the doubled input spectra, the output-gradient spectra, the products.
inline int64_t input_spectra_floats(const Layout& t) { return kFreq * 2 * t.C * 2 * t.n; }
inline int64_t grad_spectra_floats(const Layout& t) { return kFreq * t.K * 2 * t.n; }
inline int64_t products_floats(const Layout& t) { return kFreq * 2 * t.C * t.Kg; }
inline int64_t workspace_floats(const Layout& t) {
  return input_spectra_floats(t) + grad_spectra_floats(t) + products_floats(t);
}

// Variant 5 takes a backward-filter when it is stride 1, the padded input fits the 32x32 frame,
// the FFT's products do at most a quarter of the implicit GEMM's multiply-adds
// (P*Q*R*S >= 4 * 2 * 544: conv2 is 16.8x fewer; 3x3 convs on 13x13 only 1.4x), each group has
// at least 16 input and output channels, and the workspace fits.
inline bool eligible(const ConvShape& sh) {
  if (sh.stride_h != 1 || sh.stride_w != 1 || sh.pad_h < 0 || sh.pad_w < 0 || sh.n < 1 || sh.p < 1 || sh.q < 1)
    return false;
  if (sh.h + 2 * sh.pad_h > kL || sh.w + 2 * sh.pad_w > kL) return false;
  if (sh.p * sh.q * sh.r * sh.s < 4 * 2 * kFreq) return false;
  if (sh.c / sh.groups < 16 || sh.k / sh.groups < 16 || sh.groups * kFreq >= 65536) return false;
  return workspace_floats(layout(sh)) * (int64_t)sizeof(float) <= kMaxWorkspaceBytes;
}

// ---- the spectrum kernel: kPlanes planes per block, five steps separated by barriers ----

// One shared buffer, used first for the planes as read (step 1), then for their transforms
// (steps 3-5): plane stride 32*33+1 and row stride 33 keep step 2's reads (one thread per pair of
// rows) free of bank conflicts; the transforms [plane][f2][row] with row stride 33 keep step 4's
// (one thread per (plane, f2)) free of them too.
constexpr int kRawRow = kL + 1, kRawPlane = kL * kRawRow + 1;
constexpr int kSpecRow = kL + 1, kSpecPlane = kF2 * kSpecRow, kSpecPart = kPlanes * kSpecPlane;
struct SpectrumSmem {
  float f[2 * kSpecPart > kPlanes * kRawPlane ? 2 * kSpecPart : kPlanes * kRawPlane];
  GEMM_HD float& raw(int p, int h, int w) { return f[p * kRawPlane + h * kRawRow + w]; }
  GEMM_HD float& re(int p, int f2, int row) { return f[p * kSpecPlane + f2 * kSpecRow + row]; }
  GEMM_HD float& im(int p, int f2, int row) { return f[kSpecPart + p * kSpecPlane + f2 * kSpecRow + row]; }
};

// The spectra of the planes (image i, channel ch) of src (n, channels, height, width), each
// placed at (top, left) in the 32x32 frame, written as GEMM operand rows: matrix
// z = f * groups + g (f = f1 * 17 + f2), row ch - g * rows_per_group, element i (real part) and
// n + i (imaginary part); with doubled (the input), also row rows_per_group + that one holding
// (imaginary part, -real part). Plane index q = ch * n + i: a block's planes are consecutive
// images of one channel, so the stores of step 5 fill whole 32-byte sectors.
struct PlaneSpectra {
  const float* src;
  float* out;
  int64_t n;
  int channels, height, width, top, left, rows_per_group;
  bool doubled;

  GEMM_HD int64_t planes() const { return n * channels; }
  GEMM_HD const float* plane_src(int64_t q) const {
    const int64_t ch = q / n, i = q - ch * n;
    return src + (i * channels + ch) * height * width;
  }

  // Step 1: the block's planes into shared memory, a warp per row (coalesced; width <= 32). A warp
  // loads its rows of kLoadPlanes planes before storing any, so 32 loads are in flight together
  // (a load, then its store, row by row, left each block waiting out one memory latency per row:
  // 54 of them for conv2); more planes at once would raise the registers above the transforms' 86.
  GEMM_HD void load(SpectrumSmem& sm, int64_t block, int tid) const {
    constexpr int warps = kRowThreads / 32, rows = kL / warps;  // rows of a plane per warp (height <= 32)
    const int warp = tid / 32, lane = tid % 32;
    if (warp >= warps || lane >= width) return;
#pragma unroll 1
    for (int p0 = 0; p0 < kPlanes; p0 += kLoadPlanes) {
      float v[kLoadPlanes][rows];
#pragma unroll
      for (int p = 0; p < kLoadPlanes; ++p) {
        const bool real = block * kPlanes + p0 + p < planes();
        const float* s = real ? plane_src(block * kPlanes + p0 + p) + lane : nullptr;
#pragma unroll
        for (int k = 0; k < rows; ++k) {
          const int h = warp + k * warps;
          v[p][k] = real && h < height ? GEMM_LDG(s + h * width) : 0.f;
        }
      }
#pragma unroll
      for (int p = 0; p < kLoadPlanes; ++p)
#pragma unroll
        for (int k = 0; k < rows; ++k)
          if (warp + k * warps < height) sm.raw(p0 + p, warp + k * warps, lane) = v[p][k];
    }
  }

  // Step 2, thread tid < kRowThreads: frame rows 2j and 2j + 1 of plane p into registers, as
  // one complex sequence z = row0 + i row1 (zero outside the image).
  GEMM_HD void read_rows(SpectrumSmem& sm, int64_t block, int tid, float (&re)[kL], float (&im)[kL]) const {
    if (tid >= kRowThreads) return;
    const int p = tid / (kL / 2), pair = tid - p * (kL / 2);
    if (block * kPlanes + p >= planes()) return;
    const int h0 = 2 * pair - top, h1 = h0 + 1;
    const bool in0 = (unsigned)h0 < (unsigned)height, in1 = (unsigned)h1 < (unsigned)height;
#pragma unroll
    for (int j = 0; j < kL; ++j) {
      const int w = j - left;
      const bool col = (unsigned)w < (unsigned)width;
      re[j] = in0 && col ? sm.raw(p, h0, w) : 0.f;
      im[j] = in1 && col ? sm.raw(p, h1, w) : 0.f;
    }
  }

  // Step 3: the DFT of z, split into the two rows' transforms
  // Z0[f] = (Z[f] + conj Z[-f]) / 2, Z1[f] = (Z[f] - conj Z[-f]) / 2i, for f2 = f <= 16.
  GEMM_HD void write_rows(SpectrumSmem& sm, int64_t block, int tid, float (&re)[kL], float (&im)[kL]) const {
    if (tid >= kRowThreads) return;
    const int p = tid / (kL / 2), pair = tid - p * (kL / 2);
    if (block * kPlanes + p >= planes()) return;
    dft32(re, im);
    const int r0 = 2 * pair, r1 = r0 + 1;
#pragma unroll
    for (int f = 0; f < kF2; ++f) {
      const int m = (kL - f) & (kL - 1);
      sm.re(p, f, r0) = 0.5f * (re[f] + re[m]);
      sm.im(p, f, r0) = 0.5f * (im[f] - im[m]);
      sm.re(p, f, r1) = 0.5f * (im[f] + im[m]);
      sm.im(p, f, r1) = 0.5f * (re[m] - re[f]);
    }
  }

  // Step 4, thread tid < kThreads: the DFT of column f2 of plane p, in place (entry f1 of the column).
  GEMM_HD void columns(SpectrumSmem& sm, int64_t block, int tid) const {
    const int p = tid / kF2, f2 = tid - p * kF2;
    if (p >= kPlanes || block * kPlanes + p >= planes()) return;
    float re[kL], im[kL];
#pragma unroll
    for (int r = 0; r < kL; ++r) re[r] = sm.re(p, f2, r), im[r] = sm.im(p, f2, r);
    dft32(re, im);
#pragma unroll
    for (int f1 = 0; f1 < kL; ++f1) sm.re(p, f2, f1) = re[f1], sm.im(p, f2, f1) = im[f1];
  }

  // Step 5: the stores, one thread per (column f2, plane), planes fastest across threads
  // (consecutive images: each store instruction fills whole 32-byte sectors), walking f1 with a
  // fixed pointer step. (One item per (frequency, part) with its own index arithmetic made this
  // step most of the kernel's instructions.)
  GEMM_HD void store(SpectrumSmem& sm, int64_t block, int tid) const {
    const int p = tid % kPlanes, f2 = tid / kPlanes;
    const int64_t q = block * kPlanes + p;
    if (f2 >= kF2 || q >= planes()) return;
    const int64_t ch = q / n, i = q - ch * n;
    const int groups = channels / rows_per_group, g = (int)(ch / rows_per_group);
    const int64_t ld = 2 * n, rows_per_z = (doubled ? 2 : 1) * (int64_t)rows_per_group;
    const int64_t zstride = rows_per_z * ld, second = rows_per_group * ld;
    // matrix z = f * groups + g, f = f1 * 17 + f2
    float* o = out + ((int64_t)f2 * groups + g) * zstride + (ch - (int64_t)g * rows_per_group) * ld + i;
    const int64_t step = (int64_t)kF2 * groups * zstride;
#pragma unroll 4  // fully unrolled: 168 registers
    for (int f1 = 0; f1 < kL; ++f1, o += step) {
      // (row, i) = re, (row, n + i) = im; doubled: (row + rows_per_group, i) = im, (that row, n + i) = -re
      const float re = sm.re(p, f2, f1), im = sm.im(p, f2, f1);
      o[0] = re;
      o[n] = im;
      if (doubled) o[second] = im, o[second + n] = -re;
    }
  }
};

inline PlaneSpectra input_spectra(const Layout& t, const float* x, float* out) {
  return {x, out, t.n, (int)t.C, t.H, t.W, t.ph, t.pw, t.Cg, true};
}
inline PlaneSpectra grad_spectra(const Layout& t, const float* dy, float* out) {
  return {dy, out, t.n, (int)t.K, t.P, t.Q, 0, 0, t.Kg, false};
}

// ---- the products: P_z = A_z B_z^T, z = f * groups + g, M = 2Cg, N = Kg, K = 2n ----
using ProductGemm = Gemm<winograd::RowsAlongK, winograd::RowsAlongK, winograd::DenseStore, true, true>;
inline ProductGemm product_gemm(const Layout& t, const float* xs, const float* ds, float* prod) {
  const int ld = (int)(2 * t.n);
  return {(int64_t)kFreq * t.groups,
          2 * t.Cg,
          t.Kg,
          2 * t.n,
          winograd::RowsAlongK{xs, 2 * t.Cg * ld, ld},
          winograd::RowsAlongK{ds, t.Kg * ld, ld},
          winograd::DenseStore{prod, 2 * t.Cg * t.Kg, t.Kg}};
}

// ---- the inverse at the taps ----
// dw[g*Kg + kk, c, r, s] = 1/1024 sum_{f1, f2 <= 16} m(f2) Re(P e^{+2 pi i (f1 r + f2 s)/32}),
// m = 1 for the self-conjugate columns f2 = 0 and 16, else 2. One call per
// idx < groups * R * chunks * Cg * Kg (kk fastest: coalesced reads of P), each computing the taps
// s0 <= s < s0 + kTapChunk of row r (a fixed-size accumulator: it stays in registers).
// cs: cos32 then sin32 (64 floats, in shared memory on the GPU).
constexpr int kTapChunk = 8;
struct FilterFromProducts {
  const float* prod;
  const float* cs;
  float* dw;
  int groups, Cg, Kg, R, S;
  GEMM_HD int chunks() const { return (S + kTapChunk - 1) / kTapChunk; }
  GEMM_HD int64_t count() const { return (int64_t)groups * R * chunks() * Cg * Kg; }
  GEMM_HD void operator()(int64_t idx) const {
    const int kk = (int)(idx % Kg);
    int64_t rest = idx / Kg;
    const int c = (int)(rest % Cg);
    rest /= Cg;
    const int chunk = (int)(rest % chunks());
    rest /= chunks();
    const int r = (int)(rest % R), g = (int)(rest / R), s0 = chunk * kTapChunk;
    float acc[kTapChunk];
#pragma unroll
    for (int j = 0; j < kTapChunk; ++j) acc[j] = 0.f;
    // e^{+2 pi i (f1 r + f2 (s0 + j))/32} = e^{i a} e^{i b}: a = f1 r + f2 s0 from the table at run
    // time, once per (f1, f2); b = f2 j a compile-time constant (f2 and j unrolled). So each
    // product costs U = P e^{i a} (4 multiply-adds) and then 2 a tap. The 34 values of row f1 + 1
    // are loaded while row f1 is summed (the compiler, left alone, put each load just before its
    // use: one memory latency waited per frequency).
    const int64_t fstride = (int64_t)groups * 2 * Cg * Kg, imag = (int64_t)Cg * Kg;
    const float* row = prod + ((int64_t)g * 2 * Cg + c) * Kg + kk;
    float pr[kF2], pi[kF2];
#pragma unroll
    for (int f2 = 0; f2 < kF2; ++f2, row += fstride) pr[f2] = GEMM_LDG(row), pi[f2] = GEMM_LDG(row + imag);
    for (int f1 = 0; f1 < kL; ++f1) {
      float next_r[kF2], next_i[kF2];
      if (f1 + 1 < kL) {
#pragma unroll
        for (int f2 = 0; f2 < kF2; ++f2, row += fstride) next_r[f2] = GEMM_LDG(row), next_i[f2] = GEMM_LDG(row + imag);
      }
#pragma unroll
      for (int f2 = 0; f2 < kF2; ++f2) {
        const int a = (f1 * r + f2 * s0) & (kL - 1);
        const float ca = cs[a], sa = cs[kL + a];
        const float ur = pr[f2] * ca - pi[f2] * sa, ui = pr[f2] * sa + pi[f2] * ca;
        const float m = (f2 == 0 || f2 == kF2 - 1) ? 1.f : 2.f;
#pragma unroll
        for (int j = 0; j < kTapChunk; ++j) {
          const int b = (f2 * j) & (kL - 1);
          acc[j] += ur * (m * cos32(b)) - ui * (m * sin32(b));
        }
      }
      if (f1 + 1 < kL) {  // (the last row has no next one: nothing loaded to copy)
#pragma unroll
        for (int f2 = 0; f2 < kF2; ++f2) pr[f2] = next_r[f2], pi[f2] = next_i[f2];
      }
    }
    float* out = dw + (((int64_t)g * Kg + kk) * Cg + c) * R * S + (int64_t)r * S + s0;
#pragma unroll
    for (int j = 0; j < kTapChunk; ++j)
      if (s0 + j < S) out[j] = acc[j] * (1.f / (kL * kL));
  }
};

// Host entry point (csrc/cuda/conv_fft.cu); the caller checked eligible(sh).
void backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw);

}  // namespace convnet::cuda::fft
