// CPU emulation of variant 3's Winograd F(4x4, 3x3) convolutions (csrc/cuda/winograd.cuh,
// conv_winograd.cu): the transform kernels' per-element functors are called for every index as
// each_kernel calls them, and the 36*groups GEMMs run through the GEMM core's own per-thread steps
// (emulate() from tools/emulate_gemm.cu) on the tile run_gemm would pick, with variant >= 1's
// split-K rule; forward, backward-data (flipped weights, as conv.cu) and backward-filter are
// compared with a float64 direct convolution. Outputs and workspaces start as NaN.
// Shapes: AlexNet conv3/4/5 (one image), and random odd ones (H, W not multiples of 4, padding
// 0-2 per side, groups 1-3, channel counts off the tile sizes, including ones below the 32 that
// variant 3 requires, since the code itself does not depend on it). Prints the error figures.
//   nvcc -std=c++17 -O2 -x cu tools/emulate_winograd.cu -o /tmp/emulate_winograd && /tmp/emulate_winograd
#define EMULATE_GEMM_NO_MAIN
#include "emulate_gemm.cu"
#include "../csrc/cuda/winograd.cuh"

using namespace convnet::cuda::winograd;

// winograd::forward, step by step.
static void wino_forward(const ConvShape& sh, const float* x, const float* w, const float* b, float* y, int sms) {
  const Tiling t = tiling(sh);
  std::vector<float> u(kPos * t.K * t.Cg, NAN), v(kPos * t.C * t.T, NAN), m(kPos * t.K * t.T, NAN);
  const FilterTransform ft{w, u.data(), t.Kg, t.Cg};
  for (int64_t i = 0; i < t.K * t.Cg; ++i) ft(i);
  const InputTransform it{x, v.data(), t};
  for (int64_t i = 0; i < t.C * t.T; ++i) it(i);
  emulate_gemm_of(forward_gemm(t, u.data(), v.data(), m.data()), sms);
  const OutputTransform ot{m.data(), b, y, t};
  for (int64_t i = 0; i < t.K * t.T; ++i) ot(i);
}

// winograd::backward_filter, step by step.
static void wino_backward_filter(const ConvShape& sh, const float* x, const float* dy, float* dw, int sms) {
  const Tiling t = tiling(sh);
  std::vector<float> v(kPos * t.C * t.T, NAN), dyh(kPos * t.K * t.T, NAN), du(kPos * t.K * t.Cg, NAN);
  const InputTransform it{x, v.data(), t};
  for (int64_t i = 0; i < t.C * t.T; ++i) it(i);
  const GradOutputTransform gt{dy, dyh.data(), t};
  for (int64_t i = 0; i < t.K * t.T; ++i) gt(i);
  emulate_gemm_of(filter_gemm(t, dyh.data(), v.data(), du.data()), sms);
  const FilterGradTransform fg{du.data(), dw, t.Kg, t.Cg};
  for (int64_t i = 0; i < t.K * t.Cg; ++i) fg(i);
}

struct Errors {
  double norm = 0, elem = 0;  // ||got - ref|| / ||ref||; max |got - ref| / sum of |terms| (see check)
};
static Errors worst[3];  // forward, backward-data, backward-filter
// Tolerances: ~10x the largest error seen over the AlexNet and random shapes (2-4e-6 norm-wise);
// an index or transform mistake gives errors of order 1.
constexpr double kNormTol = 3e-5, kElemTol = 3e-4;

static void check(int op, const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                  const std::vector<double>& mag) {
  const MixedErrors e = check_mixed(what, got, ref, mag, kNormTol, kElemTol);
  worst[op].norm = std::fmax(worst[op].norm, e.norm);
  worst[op].elem = std::fmax(worst[op].elem, e.elem);
}

static void check_winograd(const ConvShape& s, int sms) {
  const int64_t Cg = s.c / s.groups, Kg = s.k / s.groups;
  auto x = randn(s.n * s.c * s.h * s.w), w = randn(s.k * Cg * 9), bias = randn(s.k), dy = randn(s.n * s.k * s.p * s.q);
  std::vector<double> y_ref(dy.size()), y_mag(dy.size()), dx_ref(x.size(), 0), dx_mag(x.size(), 0),
      dw_ref(w.size(), 0), dw_mag(w.size(), 0);
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t k = 0; k < s.k; ++k) {
      const int64_t g = k / Kg;
      for (int64_t p = 0; p < s.p; ++p)
        for (int64_t q = 0; q < s.q; ++q) {
          const int64_t yi = ((i * s.k + k) * s.p + p) * s.q + q;
          double acc = bias[k], mag = std::fabs(bias[k]);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < 3; ++r) {
              const int64_t h = p - s.pad_h + r;
              if (h < 0 || h >= s.h) continue;
              for (int64_t t = 0; t < 3; ++t) {
                const int64_t ww = q - s.pad_w + t;
                if (ww < 0 || ww >= s.w) continue;
                const int64_t xi = ((i * s.c + g * Cg + c) * s.h + h) * s.w + ww, wi = ((k * Cg + c) * 3 + r) * 3 + t;
                const double xw = (double)w[wi] * x[xi], dw_ = (double)w[wi] * dy[yi], xd = (double)x[xi] * dy[yi];
                acc += xw, mag += std::fabs(xw);
                dx_ref[xi] += dw_, dx_mag[xi] += std::fabs(dw_);
                dw_ref[wi] += xd, dw_mag[wi] += std::fabs(xd);
              }
            }
          y_ref[yi] = acc, y_mag[yi] = mag;
        }
    }
  std::vector<float> y(dy.size(), NAN), dx(x.size(), NAN), dw(w.size(), NAN);
  wino_forward(s, x.data(), w.data(), bias.data(), y.data(), sms);
  {  // backward-data as conv2d_backward_data runs it under variant 3
    std::vector<float> wf(w.size(), NAN);
    const conv_gemm::FlippedWeight f{w.data(), (int)Cg, (int)Kg, 3, 3};
    for (int e = 0; e < (int)wf.size(); ++e) wf[e] = f(e);
    wino_forward(conv_gemm::flipped_shape(s), dy.data(), wf.data(), nullptr, dx.data(), sms);
  }
  wino_backward_filter(s, x.data(), dy.data(), dw.data(), sms);
  char what[200];
  const char* ops[3] = {"forward", "backward-data", "backward-filter"};
  const std::vector<float>* got[3] = {&y, &dx, &dw};
  const std::vector<double>* ref[3] = {&y_ref, &dx_ref, &dw_ref};
  const std::vector<double>* mag[3] = {&y_mag, &dx_mag, &dw_mag};
  for (int op = 0; op < 3; ++op) {
    std::snprintf(what, sizeof what, "winograd %s n=%ld c=%ld h=%ld w=%ld k=%ld pad=(%ld,%ld) g=%ld", ops[op],
                  (long)s.n, (long)s.c, (long)s.h, (long)s.w, (long)s.k, (long)s.pad_h, (long)s.pad_w, (long)s.groups);
    check(op, what, *got[op], *ref[op], *mag[op]);
  }
}

static ConvShape conv3x3(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t ph, int64_t pw, int64_t g) {
  return shape(n, c, h, w, k, 3, 3, 1, 1, ph, pw, g);
}

// Which shapes variant 3 takes (conv.cu asks eligible() of the shape, and of the flipped shape
// for backward-data).
static void check_eligibility() {
  const EligibleCase cases[] = {
      {conv3x3(128, 256, 13, 13, 384, 1, 1, 1), true},   // conv3
      {conv3x3(128, 384, 13, 13, 384, 1, 1, 2), true},   // conv4
      {conv3x3(128, 384, 13, 13, 256, 1, 1, 2), true},   // conv5
      {shape(128, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2), false},   // conv2: 5x5
      {shape(128, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1), false}, // conv1
      {shape(8, 64, 13, 13, 64, 3, 3, 2, 2, 1, 1, 1), false},      // strided
      {conv3x3(8, 64, 13, 13, 64, 3, 1, 1), false},                // padding 3
      {conv3x3(8, 62, 13, 13, 64, 1, 1, 2), false},                // 31 channels per group
      {conv3x3(8, 64, 13, 13, 62, 1, 1, 2), false},
      {conv3x3(8, 64, 13, 13, 64, 2, 0, 2), true},
      {conv3x3(100000, 512, 13, 13, 512, 1, 1, 1), false},         // workspace > 1 GiB
  };
  check_eligible(eligible, cases);
}

int main() {
  variant = 1;  // variant >= 1's split-K rule (emulate_gemm.cu)
  check_eligibility();
  // AlexNet conv3, conv4, conv5 (one image; two for conv4)
  check_winograd(conv3x3(1, 256, 13, 13, 384, 1, 1, 1), 132);
  check_winograd(conv3x3(2, 384, 13, 13, 384, 1, 1, 2), 132);
  check_winograd(conv3x3(1, 384, 13, 13, 256, 1, 1, 2), 132);
  std::printf("AlexNet shapes: norm-wise / worst-element relative error: forward %.2g / %.2g, backward-data %.2g / "
              "%.2g, backward-filter %.2g / %.2g\n",
              worst[0].norm, worst[0].elem, worst[1].norm, worst[1].elem, worst[2].norm, worst[2].elem);
  const int splits_before = split_runs[1];
  check_winograd(conv3x3(16, 8, 15, 14, 6, 1, 2, 1), 132);    // 256 tiles: the filter GEMM splits K
  check_winograd(conv3x3(3, 99, 10, 9, 66, 0, 2, 3), 132);    // groups 3, Cg 33, Kg 22
  check_winograd(conv3x3(2, 40, 3, 3, 36, 0, 0, 2), 7);       // one output pixel
  check_winograd(conv3x3(1, 33, 1, 1, 34, 1, 1, 1), 7);       // 1x1 input, padding 1
  check_winograd(conv3x3(2, 35, 2, 7, 70, 2, 1, 1), 132);     // output taller than the input
  if (split_runs[1] == splits_before) {
    std::printf("FAIL: no Winograd filter GEMM was split\n");
    ++failures;
  }
  std::uniform_int_distribution<int> u(0, 1 << 20);
  for (int t = 0; t < 30; ++t) {
    const int64_t g = 1 + u(rng) % 3, ph = u(rng) % 3, pw = u(rng) % 3;
    const int64_t h = std::max<int64_t>(3 - 2 * ph, 1) + u(rng) % 14, w = std::max<int64_t>(3 - 2 * pw, 1) + u(rng) % 14;
    const int64_t cg = 1 + u(rng) % 40, kg = 1 + u(rng) % 40;
    check_winograd(conv3x3(1 + u(rng) % 3, g * cg, h, w, g * kg, ph, pw, g), t % 2 ? 132 : 5);
  }
  // Variant 4: the same GEMMs on the multistage k loop (emulate_gemm.cu: emulate_multistage).
  variant = 4;
  const int multistage_before = multistage_runs[0] + multistage_runs[1];
  check_winograd(conv3x3(16, 8, 15, 14, 6, 1, 2, 1), 132);
  check_winograd(conv3x3(3, 99, 10, 9, 66, 0, 2, 3), 132);
  check_winograd(conv3x3(2, 40, 3, 3, 36, 0, 0, 2), 7);
  check_winograd(conv3x3(2, 35, 2, 7, 70, 2, 1, 1), 132);
  for (int t = 0; t < 8; ++t) {
    const int64_t g = 1 + u(rng) % 3, ph = u(rng) % 3, pw = u(rng) % 3;
    const int64_t h = std::max<int64_t>(3 - 2 * ph, 1) + u(rng) % 14, w = std::max<int64_t>(3 - 2 * pw, 1) + u(rng) % 14;
    const int64_t cg = 1 + u(rng) % 40, kg = 1 + u(rng) % 40;
    check_winograd(conv3x3(1 + u(rng) % 3, g * cg, h, w, g * kg, ph, pw, g), t % 2 ? 132 : 5);
  }
  if (multistage_runs[0] + multistage_runs[1] == multistage_before) {
    std::printf("FAIL: variant 4 not emulated\n");
    ++failures;
  }
  std::printf("all shapes: norm-wise / worst-element relative error: forward %.2g / %.2g, backward-data %.2g / "
              "%.2g, backward-filter %.2g / %.2g (tolerances %.0e / %.0e)\n",
              worst[0].norm, worst[0].elem, worst[1].norm, worst[1].elem, worst[2].norm, worst[2].elem, kNormTol,
              kElemTol);
  std::printf(failures ? "FAILED: %d\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
