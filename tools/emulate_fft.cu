// CPU emulation of variant 5's FFT backward-filter (csrc/cuda/fft.cuh, conv_fft.cu): the spectrum
// kernel's five steps run for every thread of every block, barrier by barrier, on a shared-memory
// buffer and registers that start as NaN; the products run through the GEMM core's own per-thread
// steps (emulate() from tools/emulate_gemm.cu) on the tile run_gemm would pick, under variant 1's
// split-K rule and variant 4's multistage loop; the inverse at the taps is called for every index.
// The result is compared with a float64 direct sum. Also: dft32 against a float64 DFT, and which
// shapes eligible() takes.
// Shapes: AlexNet conv2 (one image), planes that fill the 32x32 frame exactly
// (the wrap-around limit), kernels up to 11 wide (several 8-tap chunks), batch 1, odd channel
// counts and groups 1-3, and shapes eligible() refuses (the code does not depend on it).
//   nvcc -std=c++17 -O2 -x cu tools/emulate_fft.cu -o /tmp/emulate_fft && /tmp/emulate_fft
#define EMULATE_GEMM_NO_MAIN
#include "emulate_gemm.cu"
#include "../csrc/cuda/fft.cuh"

using namespace convnet::cuda::fft;

// spectrum_kernel, block by block.
static void emulate_spectra(const PlaneSpectra& s) {
  struct Registers {
    float re[kL], im[kL];
  };
  auto sm = std::make_unique<SpectrumSmem>();
  std::vector<Registers> regs(kThreads);
  const int64_t blocks = (s.planes() + kPlanes - 1) / kPlanes;
  for (int64_t b = 0; b < blocks; ++b) {
    for (float& v : sm->f) v = NAN;
    for (auto& r : regs)
      for (int j = 0; j < kL; ++j) r.re[j] = r.im[j] = NAN;
    for (int t = 0; t < kThreads; ++t) s.load(*sm, b, t);
    for (int t = 0; t < kThreads; ++t) s.read_rows(*sm, b, t, regs[t].re, regs[t].im);
    for (int t = 0; t < kThreads; ++t) s.write_rows(*sm, b, t, regs[t].re, regs[t].im);
    for (int t = 0; t < kThreads; ++t) s.columns(*sm, b, t);
    for (int t = 0; t < kThreads; ++t) s.store(*sm, b, t);
  }
}

// fft::backward_filter, step by step.
static void fft_backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw, int sms) {
  const Layout t = layout(sh);
  std::vector<float> xs(input_spectra_floats(t), NAN), ds(grad_spectra_floats(t), NAN), prod(products_floats(t), NAN);
  emulate_spectra(input_spectra(t, x, xs.data()));
  emulate_spectra(grad_spectra(t, dy, ds.data()));
  emulate_gemm_of(product_gemm(t, xs.data(), ds.data(), prod.data()), sms);
  float cs[2 * kL];
  for (int j = 0; j < kL; ++j) cs[j] = cos32(j), cs[kL + j] = sin32(j);
  const FilterFromProducts f{prod.data(), cs, dw, t.groups, t.Cg, t.Kg, t.R, t.S};
  for (int64_t i = 0; i < f.count(); ++i) f(i);
}

static double worst_norm = 0, worst_elem = 0;
// Tolerances: 4-5x the largest error seen (4-5e-7 norm-wise on most shapes, 2.5e-6 on the one-pixel
// one, 2e-6 of an element's |terms| plus the mean); an index, sign or twiddle mistake gives
// errors of order 1 (tried: a flipped sign in the row split, the weight of column 16, a twiddle).
constexpr double kNormTol = 1e-5, kElemTol = 1e-5;

static void check_fft(const ConvShape& s, int sms) {
  const int64_t Cg = s.c / s.groups, Kg = s.k / s.groups;
  auto x = randn(s.n * s.c * s.h * s.w), dy = randn(s.n * s.k * s.p * s.q);
  std::vector<double> ref(s.k * Cg * s.r * s.s, 0), mag(ref.size(), 0);
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t k = 0; k < s.k; ++k) {
      const int64_t g = k / Kg;
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < s.r; ++r)
          for (int64_t t = 0; t < s.s; ++t) {
            double acc = 0, m = 0;
            for (int64_t p = 0; p < s.p; ++p) {
              const int64_t h = p - s.pad_h + r;
              if (h < 0 || h >= s.h) continue;
              for (int64_t q = 0; q < s.q; ++q) {
                const int64_t w = q - s.pad_w + t;
                if (w < 0 || w >= s.w) continue;
                const double v = (double)dy[((i * s.k + k) * s.p + p) * s.q + q] *
                                 x[((i * s.c + g * Cg + c) * s.h + h) * s.w + w];
                acc += v, m += std::fabs(v);
              }
            }
            const int64_t wi = ((k * Cg + c) * s.r + r) * s.s + t;
            ref[wi] += acc, mag[wi] += m;
          }
    }
  std::vector<float> dw(ref.size(), NAN);
  fft_backward_filter(s, x.data(), dy.data(), dw.data(), sms);
  char what[200];
  std::snprintf(what, sizeof what, "fft backward-filter n=%ld c=%ld h=%ld w=%ld k=%ld kernel %ldx%ld pad=(%ld,%ld) g=%ld",
                (long)s.n, (long)s.c, (long)s.h, (long)s.w, (long)s.k, (long)s.r, (long)s.s, (long)s.pad_h,
                (long)s.pad_w, (long)s.groups);
  const MixedErrors e = check_mixed(what, dw, ref, mag, kNormTol, kElemTol);
  worst_norm = std::fmax(worst_norm, e.norm), worst_elem = std::fmax(worst_elem, e.elem);
}

// dft32 against a float64 DFT of random complex vectors.
static void check_dft32() {
  double worst = 0;
  for (int trial = 0; trial < 20; ++trial) {
    auto a = randn(2 * kL);
    float re[kL], im[kL];
    for (int j = 0; j < kL; ++j) re[j] = a[j], im[j] = a[kL + j];
    dft32(re, im);
    double scale = 0;
    for (float v : a) scale = std::fmax(scale, std::fabs(v));
    for (int f = 0; f < kL; ++f) {
      double sr = 0, si = 0;
      for (int j = 0; j < kL; ++j) {
        const double ang = -2 * M_PI * f * j / kL;
        sr += a[j] * std::cos(ang) - a[kL + j] * std::sin(ang);
        si += a[j] * std::sin(ang) + a[kL + j] * std::cos(ang);
      }
      worst = std::fmax(worst, std::fmax(std::fabs(sr - re[f]), std::fabs(si - im[f])) / (scale * kL));
    }
  }
  if (!(worst < 1e-6)) {
    std::printf("FAIL dft32: worst error %.3g of n * max|input|\n", worst);
    ++failures;
  }
}

// Which shapes variant 5 takes.
static void check_eligibility() {
  const EligibleCase cases[] = {
      {shape(128, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2), true},     // conv2, one device
      {shape(128, 48, 27, 27, 128, 5, 5, 1, 1, 2, 2, 1), true},     // conv2, one tower
      {shape(128, 256, 13, 13, 384, 3, 3, 1, 1, 1, 1, 1), false},   // conv3: 13x13 3x3 (Winograd's)
      {shape(128, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1), false},  // conv1
      {shape(8, 32, 28, 28, 32, 5, 5, 1, 1, 2, 2, 1), true},        // 32x32 padded: fits
      {shape(8, 32, 29, 28, 32, 5, 5, 1, 1, 2, 2, 1), false},       // 33 rows padded
      {shape(8, 32, 27, 27, 32, 5, 5, 2, 2, 2, 2, 1), false},       // stride 2
      {shape(8, 30, 27, 27, 32, 5, 5, 1, 1, 2, 2, 2), false},       // 15 input channels per group
      {shape(8, 32, 27, 27, 30, 5, 5, 1, 1, 2, 2, 2), false},       // 15 output channels per group
      {shape(8, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1, 1), false},       // 16*16*9 < 4*1088
      {shape(1000, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2), false},   // workspace > 1 GiB
  };
  check_eligible(eligible, cases);
}

int main() {
  check_dft32();
  check_eligibility();
  variant = 1;  // variant >= 1's split-K rule, the register-staged loop (emulate_gemm.cu)
  check_fft(shape(1, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2), 132);  // AlexNet conv2, one image
  std::printf("AlexNet conv2: norm-wise / worst-element relative error %.2g / %.2g\n", worst_norm, worst_elem);
  check_fft(shape(40, 6, 9, 7, 10, 5, 3, 1, 1, 2, 1, 1), 2);      // 40 images (K = 80)
  check_fft(shape(2, 9, 28, 30, 6, 5, 7, 1, 1, 2, 1, 3), 132);    // 32x32 padded frame, groups 3
  check_fft(shape(1, 5, 32, 32, 7, 11, 9, 1, 1, 0, 0, 1), 7);     // unpadded 32x32, 11-wide: 2 tap chunks
  check_fft(shape(3, 4, 5, 6, 4, 9, 10, 1, 1, 2, 3, 2), 132);     // output 1x1: kernel = padded input
  check_fft(shape(1, 2, 1, 1, 3, 1, 1, 1, 1, 0, 0, 1), 132);      // one pixel
  std::uniform_int_distribution<int> u(0, 1 << 20);
  for (int t = 0; t < 24; ++t) {
    if (t == 12) variant = 4;  // the second half on the multistage k loop
    const int64_t g = 1 + u(rng) % 3, ph = u(rng) % 4, pw = u(rng) % 4;
    const int64_t h = 1 + u(rng) % (32 - 2 * ph), w = 1 + u(rng) % (32 - 2 * pw);
    const int64_t r = 1 + u(rng) % std::min<int64_t>(11, h + 2 * ph), s = 1 + u(rng) % std::min<int64_t>(11, w + 2 * pw);
    const int64_t cg = 1 + u(rng) % 20, kg = 1 + u(rng) % 20;
    check_fft(shape(1 + u(rng) % 3, g * cg, h, w, g * kg, r, s, 1, 1, ph, pw, g), t % 2 ? 132 : 5);
  }
  if (multistage_runs[0] + multistage_runs[1] == 0) {
    std::printf("FAIL: variant 4's multistage loop not emulated\n");
    ++failures;
  }
  std::printf("all shapes: norm-wise / worst-element relative error %.2g / %.2g (tolerances %.0e / %.0e)\n", worst_norm,
              worst_elem, kNormTol, kElemTol);
  std::printf(failures ? "FAILED: %d\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
