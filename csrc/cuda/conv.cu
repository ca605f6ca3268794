// CUDA twins of the convolution family: every op is an implicit GEMM on the one tiled core in
// gemm.cuh (no im2col buffer, no cuDNN/cuBLAS).
//
// Variants, chosen at run time by CONVNET_CONV_VARIANT (read once; default 5, the fastest measured), or from Python by
// the hidden convnet._C.set_conv_variant(v) / _C.conv_variant() (tests switch with these). They
// apply to the conv and the linear GEMMs (linear.cu) alike; results agree to float32 rounding
// (the summation order of split-K partials differs), each is deterministic:
//   0  the reference: split-K by choose_split_k (gemm.cuh), backward-data as described below.
//   1  split-K by choose_split_k_waves (a wave-quantisation model: no nearly-empty last wave,
//      e.g. conv2 backward-filter 260 blocks instead of 280 on 264 slots), and stride-1
//      backward-data with padding < kernel and > 16 input channels per group as a forward conv
//      of dy with flipped weights (conv_gemm.cuh: FlippedWeight; the forward GEMM has 128
//      registers / 2 blocks per SM against the phase GEMM's 167 / 1).
//   2  variant 1, plus a 48x128 tile (gemm.cuh: Tile48) for GEMMs with M <= 96 where it pads
//      less than the 128/64 tiles: conv1 forward and backward-filter (M = 96), conv2's flipped
//      backward-data (M = 48 per group).
//   3  variant 2, plus Winograd F(4x4, 3x3) (winograd.cuh, conv_winograd.cu) for 3x3 stride-1
//      convs with padding <= 2 and >= 32 channels per group on both sides (conv3-5): forward,
//      backward-filter, and stride-1 backward-data (the forward of dy with flipped weights).
//      Errors a few times float32 rounding (~2e-6 relative, norm-wise; tools/emulate_winograd.cu).
//   4  variant 3 with the multistage k loop (gemm.cuh: gemm_kernel_multistage): 4 shared stages
//      filled by cp.async straight from global memory (zero-fill for padding), 3 k-tiles in
//      flight instead of 1 register-staged one; same tiles, split rule, sums and results as 3
//      (every loader is a plain load, so all GEMMs take it on sm_80+; older GPUs run 3's loop).
//      ptxas (sm_90, gemm_kernel_multistage): 128x128 tile forward 127 / backward-filter 128 /
//      columns 128 / linear 127 regs at 2 blocks/SM, backward-data 157 (1 block/SM; 3's: 167);
//      64x64 80-91, 16x128 115-117, 48x128 147-151 (3 blocks/SM); no spills, no stack. Static
//      smem (4 stages): 33792 / 17408 / 19456 / 23552 bytes. sm_80: the 128x128 forward spills
//      52 bytes (3's backward-filter and columns GEMMs spill 80 / 56 there, as before).
//   5  variant 4, plus an FFT backward-filter (fft.cuh, conv_fft.cu) for stride-1 convs whose
//      padded input fits a 32x32 frame and whose implicit GEMM would do >= 4x the FFT products'
//      multiply-adds, >= 16 channels per group on both sides (conv2: 5x5 on 27x27). Errors of
//      float32 rounding size (tools/emulate_fft.cu). The default: on the H200, conv2's
//      backward-filter 2.21 -> 0.50 ms (0.95 of cuDNN), the rest unchanged.
//   Predictions (and measurements, once run): benchmarks/results/NOTES-conv-cuda.md.
//
// Per group g (grid.z), with Cg = c/groups,
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
//                    When Cg <= 16 (conv1: 3) that GEMM would do only Cg multiply-adds per gathered
//                    dy element, so instead: cols = W^T dy per group (a dense GEMM, M = Cg*R*S,
//                    N = images*P*Q, K = Kg, into a workspace of <= ~256 MB, a chunk of images at a
//                    time), then col2im_kernel gathers each dx element's taps from cols in a fixed order.
//   backward-filter  dw[gKg+m, c, r, s] = sum_{i,p,q} dy[i, gKg+m, p, q] x[i, gCg+c, p*sh-ph+r, q*sw-pw+s]
//                    M = Kg, N = Cg*R*S, K = n*P*Q: few output tiles and a huge reduction, so
//                    run_gemm splits K (partials in a workspace, summed in a fixed order).
//   bias gradient    channel_sum (channel_sum.cu): fixed-order per-channel reduction.
// All divisions by shape constants in the index maps use FastDiv (multiply-high + shift). The
// element offsets inside one image (c*H*W + h*W + w, k*P*Q + ...) are 32-bit: checked below.
//
// Checked without a GPU by tools/emulate_gemm.cu, which runs these exact index maps through the
// kernel's own per-thread steps on the CPU against float64 references (its header: how to run).
//
// ptxas -v (sm_90, CUDA 13.0, -O3; CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh):
//   kernel (registers, static smem)       128x128 tile         64x64 tile         16x128 tile
//   gemm_kernel: conv forward           127 regs 16.5 KB    89 regs  8.5 KB   123 regs  9.5 KB
//   gemm_kernel: conv backward-data     167 regs 16.5 KB    95 regs  8.5 KB   127 regs  9.5 KB
//   gemm_kernel: conv backward-filter   127 regs 16.5 KB    87 regs  8.5 KB   121 regs  9.5 KB
//   gemm_kernel: linear forward         128 regs 16.5 KB    79 regs  8.5 KB   103 regs  9.5 KB
//   gemm_kernel: linear dx              128 regs 16.5 KB    79 regs  8.5 KB    79 regs  9.5 KB
//   gemm_kernel: linear dw              127 regs 16.5 KB    71 regs  8.5 KB    79 regs  9.5 KB
//   Zero spills and zero stack on sm_90 (the H100/H200 target). The 128x128 tile is capped at 128
//   registers (2 blocks/SM), except backward-data (167 regs, 1 block/SM: capped, it spilled 164
//   bytes). The backward-data columns GEMM: 128/79/103 regs (128x128/64x64/16x128).
//   sm_80 (A100 build) is within a few registers, except that the 128x128 backward-filter and
//   columns GEMMs spill 80 and 56 bytes there. gemm_reduce_kernel, channel sums, col2im: 30-34
//   regs, no spills. Variant 1 adds only flip_weights_kernel (26 regs, no spills); its flipped
//   backward-data is the forward GEMM instantiation itself. Variant 2's 48x128 tile (sm_90):
//   forward 157, backward-data 161, backward-filter 155, linear forward 137, linear dx 119 regs
//   (3 blocks/SM of 128 threads), 11.8 KB static smem, no spills (sm_80: none either).
#include "conv_gemm.cuh"
#include "fft.cuh"
#include "winograd.cuh"

namespace convnet::cuda {
namespace {

// The per-image offsets (and the GEMM sizes) are 32-bit.
// Below 2^31 by a grid-stride step (at most 2^21 here): an int index one step past the last
// element must not wrap (col2im_kernel and flip_weights_kernel wrote at negative offsets).
constexpr int64_t kIndexLimit = INT32_MAX - ((int64_t)1 << 21);
void check_sizes(const ConvShape& sh) {
  CHECK_VALUE(sh.c * sh.h * sh.w < kIndexLimit && sh.k * sh.p * sh.q < kIndexLimit &&
                  sh.k * (sh.c / sh.groups) * sh.r * sh.s < kIndexLimit,  // the weights: (K, C/groups, R, S)
              "tensors too large for the CUDA kernels' 32-bit per-image indexing");
}

__global__ void __launch_bounds__(256) flip_weights_kernel(conv_gemm::FlippedWeight f, float* __restrict__ wf, int n) {
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < n; e += gridDim.x * blockDim.x) wf[e] = f(e);
}

// dx[img0 + blockIdx.y] from the chunk's columns: one thread per element, grid-stride over the image.
__global__ void __launch_bounds__(256)
col2im_kernel(conv_gemm::Col2im f, float* __restrict__ dx, int64_t img0, int chw, FastDiv hw, FastDiv w) {
  const int i = blockIdx.y;
  float* out = dx + (img0 + i) * chw;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < chw; e += gridDim.x * blockDim.x) {
    int ch = hw.div(e), rest = hw.mod(e, ch);
    int h = w.div(rest), x = w.mod(rest, h);
    out[e] = f(i, ch, h, x);
  }
}

}  // namespace

void conv2d(const ConvShape& sh, const float* x, const float* w, const float* b, float* y) {
  check_sizes(sh);
  if (conv_variant() >= 3 && winograd::eligible(sh)) {
    winograd::forward(sh, x, w, b, y);
    return;
  }
  run_gemm(conv_gemm::forward(sh, x, w, b, y), "conv2d forward", conv_variant());
}

void conv2d_backward_data(const ConvShape& sh, const float* w, const float* dy, float* dx) {
  check_sizes(sh);
  if (conv_variant() >= 1 && !conv_gemm::backward_data_via_columns(sh) && conv_gemm::backward_data_via_flip(sh)) {
    const int64_t nw = sh.k * (sh.c / sh.groups) * sh.r * sh.s;
    GpuScratch ws(sizeof(float) * (size_t)nw);
    float* wf = static_cast<float*>(ws.p);
    const conv_gemm::FlippedWeight f{w, (int)(sh.c / sh.groups), (int)(sh.k / sh.groups), (int)sh.r, (int)sh.s};
    flip_weights_kernel<<<blocks_for(nw, 256, 4096), 256, 0, stream()>>>(f, wf, (int)nw);
    CUDA_CHECK_LAUNCH("flip_weights_kernel");
    const ConvShape flipped = conv_gemm::flipped_shape(sh);
    if (conv_variant() >= 3 && winograd::eligible(flipped)) {
      winograd::forward(flipped, dy, wf, nullptr, dx);
      return;
    }
    run_gemm(conv_gemm::forward(conv_gemm::flipped_shape(sh), dy, wf, nullptr, dx), "conv2d backward-data (flipped)",
             conv_variant());
    return;
  }
  if (!conv_gemm::backward_data_via_columns(sh)) {
    run_gemm(conv_gemm::backward_data(sh, w, dy, dx), "conv2d backward-data", conv_variant());
    return;
  }
  int64_t chunk = conv_gemm::columns_chunk(sh);
  if (chunk > 65535) chunk = 65535;  // images of a chunk go on grid.y
  GpuScratch ws(sizeof(float) * (size_t)(sh.c * sh.r * sh.s * chunk * sh.p * sh.q));
  float* cols = static_cast<float*>(ws.p);
  const int64_t chw = sh.c * sh.h * sh.w;
  for (int64_t img0 = 0; img0 < sh.n; img0 += chunk) {
    const int64_t images = chunk < sh.n - img0 ? chunk : sh.n - img0;
    run_gemm(conv_gemm::backward_data_columns(sh, w, dy, img0, images, cols), "conv2d backward-data (columns)",
             conv_variant());
    const dim3 grid(blocks_for(chw, 256, 4096), (unsigned)images);
    col2im_kernel<<<grid, 256, 0, stream()>>>(conv_gemm::backward_data_col2im(sh, cols, images), dx, img0, (int)chw,
                                             FastDiv(sh.h * sh.w), FastDiv(sh.w));
    CUDA_CHECK_LAUNCH("col2im_kernel");
  }
}

void conv2d_backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw, float* db) {
  check_sizes(sh);
  if (conv_variant() >= 5 && fft::eligible(sh))
    fft::backward_filter(sh, x, dy, dw);
  else if (conv_variant() >= 3 && winograd::eligible(sh))
    winograd::backward_filter(sh, x, dy, dw);
  else
    run_gemm(conv_gemm::backward_filter(sh, x, dy, dw), "conv2d backward-filter", conv_variant());
  if (db) channel_sum(dy, sh.n, sh.k, sh.p * sh.q, db);
}

}  // namespace convnet::cuda
