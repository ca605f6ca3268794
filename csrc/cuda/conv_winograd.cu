// Winograd F(4x4, 3x3) convolutions on CUDA (variant 3; the math, layouts and point choice in
// winograd.cuh): the transforms are element-wise kernels (one thread per (channel, tile) or
// (k, c), grid-stride; consecutive threads take consecutive tiles, so the 36 workspace stores or
// loads of a thread are each coalesced across the warp), the 36*groups products run on the GEMM
// core (gemm.cuh) with dense loaders, split-K and tile choice as every other conv GEMM.
//
// Checked without a GPU by tools/emulate_winograd.cu (the same functors and GEMM steps on the CPU
// against a float64 direct conv).
//
// ptxas -v (CUDA 13.0, -O3; CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh), sm_90:
//   each_kernel: filter transform 32 regs, input transform 66, output transform 48, output-
//   gradient transform 40, filter-gradient transform 40; 0 bytes stack (the transform matrices
//   fold into constants).
//   gemm_kernel (128x128 / 64x64 / 48x128 / 16x128 tiles): forward GEMM (U x V) 127 / 72 / 115 /
//   79 regs; backward-filter GEMM (dY^ x V^T) 128 / 77 / 127 / 95 regs.
//   No spills (sm_80 likewise). With 8-byte pointers in the loaders' Col state the
//   backward-filter GEMM spilled 104 bytes on the 128x128 tile: hence 32-bit offsets.
#include "winograd.cuh"

namespace convnet::cuda::winograd {
namespace {

template <class F>
__global__ void __launch_bounds__(256) each_kernel(F f, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) f(i);
}

// f(i) for every i < n (one of the transforms in winograd.cuh).
template <class F>
void each(const F& f, int64_t n) {
  if (n <= 0) return;
  each_kernel<<<blocks_for(n, 256), 256, 0, stream()>>>(f, n);
  CUDA_CHECK_LAUNCH("winograd each_kernel");
}

struct Workspace {
  GpuScratch ws;
  float *filt, *in, *out;  // 36*K*Cg, 36*C*T, 36*K*T floats
  explicit Workspace(const Tiling& t)
      : ws(sizeof(float) * (size_t)workspace_floats(t)) {
    filt = static_cast<float*>(ws.p);
    in = filt + kPos * t.K * t.Cg;
    out = in + kPos * t.C * t.T;
  }
};

}  // namespace

void forward(const ConvShape& sh, const float* x, const float* w, const float* b, float* y) {
  const Tiling t = tiling(sh);
  Workspace ws(t);
  each(FilterTransform{w, ws.filt, t.Kg, t.Cg}, t.K * t.Cg);
  each(InputTransform{x, ws.in, t}, t.C * t.T);
  run_gemm(forward_gemm(t, ws.filt, ws.in, ws.out), "conv2d forward (winograd)", conv_variant());
  each(OutputTransform{ws.out, b, y, t}, t.K * t.T);
}

void backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw) {
  const Tiling t = tiling(sh);
  Workspace ws(t);
  each(InputTransform{x, ws.in, t}, t.C * t.T);
  each(GradOutputTransform{dy, ws.out, t}, t.K * t.T);
  run_gemm(filter_gemm(t, ws.out, ws.in, ws.filt), "conv2d backward-filter (winograd)", conv_variant());
  each(FilterGradTransform{ws.filt, dw, t.Kg, t.Cg}, t.K * t.Cg);
}

}  // namespace convnet::cuda::winograd
