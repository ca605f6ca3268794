// FFT backward-filter on CUDA (variant 5; the math, layouts and eligibility in fft.cuh): the
// spectra of the input and output-gradient planes (spectrum_kernel, kPlanes planes per block in
// shared memory), their products per frequency on the GEMM core (gemm.cuh, dense loaders, split-K
// and tile choice as every other GEMM), then the inverse DFT at the R x S taps (one thread per
// (group, tap row, chunk of 8 taps, input channel, output channel)).
//
// Checked without a GPU by tools/emulate_fft.cu (the same step functions, barrier by barrier,
// and the GEMM core's per-thread steps, on the CPU against a float64 direct sum).
//
// ptxas -v (CUDA 13.0, -O3; CMAKE_ARGS=-DCONVNET_PTXAS_VERBOSE=ON tools/dev_build.sh):
//   spectrum_kernel 86 registers on sm_90 and sm_80, 35,904 bytes static shared memory
//   (5 warps a block: registers allow 4 blocks an SM; shared memory 6 on sm_90, 4 on sm_80, and
//   ncu on the H200 reported 4 at the carveout the driver chose), no stack, no spills: dft32's
//   64 values stay in registers (every index a constant once unrolled).
//   filter_kernel 128 registers (two rows of 34 products in flight: 2 blocks of 256 an SM, more
//   than conv2's 240 blocks need), 256 bytes of shared memory, no stack (with the cos/sin table
//   indexed at run time from its constexpr array it had a 128-byte stack frame: hence the
//   unrolled fill). The product GEMM is the Winograd backward-filter's instantiation (two k-fast
//   dense operands); conv2's (M = 96, N = 128) takes the 48x128 tile: multistage 117 registers,
//   23,552 bytes (128x128 127, 64x64 79), no spills.
// Measured (ncu, H200, conv2 at batch 128): at 47382a3 input spectra 173 us, gradient spectra
// 376 us, products 225 us, filter 289 us (the spectra bound by integer instructions, the store
// step's per-item index arithmetic, and one memory latency per row loaded; the filter by a load
// latency per frequency); after rewriting those steps (deb597b) 58, 105, 226 and 61 us.
#include "fft.cuh"

namespace convnet::cuda::fft {
namespace {

__global__ void __launch_bounds__(kThreads) spectrum_kernel(PlaneSpectra s) {
  __shared__ SpectrumSmem sm;
  const int64_t block = blockIdx.x;
  const int tid = threadIdx.x;
  s.load(sm, block, tid);
  __syncthreads();
  float re[kL], im[kL];
  s.read_rows(sm, block, tid, re, im);
  __syncthreads();  // the transforms overwrite the planes
  s.write_rows(sm, block, tid, re, im);
  __syncthreads();
  s.columns(sm, block, tid);
  __syncthreads();
  s.store(sm, block, tid);
}

__global__ void __launch_bounds__(256) filter_kernel(FilterFromProducts f, int64_t count) {
  __shared__ float cs[2 * kL];
  if (threadIdx.x == 0)  // constant indices: the table folds into immediates (indexed at run time it went to the stack)
#pragma unroll
    for (int j = 0; j < kL; ++j) cs[j] = cos32(j), cs[kL + j] = sin32(j);
  __syncthreads();
  f.cs = cs;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
    f(i);
}

void spectra(const PlaneSpectra& s, const char* name) {
  const int64_t blocks = (s.planes() + kPlanes - 1) / kPlanes;
  CHECK_VALUE(blocks < INT32_MAX, name, ": too many planes (", s.planes(), ")");
  spectrum_kernel<<<(unsigned)blocks, kThreads, 0, stream()>>>(s);
  CUDA_CHECK_LAUNCH("fft spectrum_kernel");
}

}  // namespace

void backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw) {
  const Layout t = layout(sh);
  GpuScratch ws(sizeof(float) * (size_t)workspace_floats(t));
  float* xs = static_cast<float*>(ws.p);
  float* ds = xs + input_spectra_floats(t);
  float* prod = ds + grad_spectra_floats(t);
  spectra(input_spectra(t, x, xs), "conv2d backward-filter (fft): input spectra");
  spectra(grad_spectra(t, dy, ds), "conv2d backward-filter (fft): gradient spectra");
  run_gemm(product_gemm(t, xs, ds, prod), "conv2d backward-filter (fft)", conv_variant());
  const FilterFromProducts f{prod, nullptr, dw, t.groups, t.Cg, t.Kg, t.R, t.S};
  filter_kernel<<<blocks_for(f.count(), 256), 256, 0, stream()>>>(f, f.count());
  CUDA_CHECK_LAUNCH("fft filter_kernel");
}

}  // namespace convnet::cuda::fft
