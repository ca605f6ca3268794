// Entry points of the local response normalisation family: check arguments once,
// allocate outputs, dispatch.
#include <cfloat>
#include <cmath>

#include "../kernels/lrn.h"
#include "dispatch.h"

namespace convnet {
namespace {

constexpr int kLrnVariants = 3;
// Variant 2 (the ring forward, the channel-block backward) is the default: each direction's faster
// kernel on the H200 (benchmarks/results/2026-11-26-h200-29eff7f: forward v0 0.63-0.67 of copy,
// v1 0.59-0.61; backward v0 0.50-0.55, v1 0.61-0.67).
constexpr int kDefaultLrnVariant = 2;

VariantSwitch& variant_switch() {
  static VariantSwitch s{"CONVNET_LRN_VARIANT", "set_lrn_variant", kLrnVariants, kDefaultLrnVariant, "0 to 2"};
  return s;
}

// The settings, as the kernels' float32 (LrnShape's size, alpha, beta, k; n, c and hw left 0).
LrnShape lrn_settings(int64_t size, double alpha, double beta, double k) {
  CHECK_VALUE(size >= 1 && size % 2 == 1, "size must be an odd integer >= 1, got ", size);
  // As float32, the kernels' type: alpha or beta past 3.4e38 becomes inf and k under 1e-45 becomes 0,
  // and each of those turned every output into NaN.
  const float a = (float)alpha, b = (float)beta, kf = (float)k;
  CHECK_VALUE(std::isfinite(a) && a >= 0, "alpha must be finite and >= 0 as a float32, got ", alpha);
  // A negative beta amplifies instead of normalising; it also made the exact path's 0 * inf of a
  // zero input NaN (csrc/kernels/lrn.h).
  CHECK_VALUE(std::isfinite(b) && b >= 0, "beta must be finite and >= 0 as a float32, got ", beta);
  // A normal float32 k: with a subnormal one, s = k + alpha sum lost its digits
  CHECK_VALUE(std::isfinite(kf) && kf >= FLT_MIN, "k must be finite and >= 1.18e-38 (a normal float32), got ", k);
  // Squares under float's normal range (x below ~1e-19) lose their digits; they must not count
  // against k: alpha x^2 < k 2^-24 for every such x.
  CHECK_VALUE((double)a * FLT_MIN <= (double)kf / 16777216.0,
              "alpha / k must be at most 2^-24 / 1.18e-38 (5e30), or squares under float's normal range would ",
              "count: got alpha = ", alpha, " and k = ", k);
  // The backward scales by 2 alpha beta in float: under float's normal range it has lost its digits
  // (alpha = 1e-45, beta = 0.75: 2 alpha beta is 2^-148 against 1.5 x 2^-149)
  const float two_alpha_beta = 2.f * a * b;
  CHECK_VALUE(two_alpha_beta == 0.f || two_alpha_beta >= FLT_MIN,
              "2 alpha beta must be 0 or at least 1.18e-38 (a normal float32), got alpha = ", alpha, " and beta = ",
              beta);
  // s >= k: a zero input's s^-beta and the backward's s^(-beta-1) are largest there, and the
  // kernels' exact path computes them in double (csrc/kernels/lrn.h)
  CHECK_VALUE(std::isfinite(std::pow((double)kf, -(double)b)) && std::isfinite(std::pow((double)kf, -(double)b - 1)),
              "k^-beta and k^-(beta+1) must fit in a double, got k = ", k, " and beta = ", beta);
  return LrnShape{0, 0, 0, size, a, b, kf};
}

LrnShape lrn_shape(const Tensor& x, int64_t size, double alpha, double beta, double k) {
  check_defined(x, "x");
  check_dtype(x, DType::f32, "x");
  check_dim(x, 4, "x");
  LrnShape sh = lrn_settings(size, alpha, beta, k);
  // The CUDA kernels index channels in int, with a window's reach added
  CHECK_VALUE(x.size(1) < ((int64_t)1 << 30), "channel counts of 2^30 or more are not supported, got ", x.size(1));
  sh.n = x.size(0);
  sh.c = x.size(1);
  sh.hw = x.size(2) * x.size(3);
  return sh;
}

}  // namespace

Tensor lrn(const Tensor& x, int64_t size, double alpha, double beta, double k) {
  OpScope op("lrn");
  LrnShape sh = lrn_shape(x, size, alpha, beta, k);
  Tensor y = Tensor::empty_like(x);
  if (x.numel() > 0) CONVNET_DISPATCH(x.device(), lrn, sh, x.data<float>(), y.data<float>());
  return y;
}

Tensor lrn_backward(const Tensor& x, const Tensor& y, const Tensor& dy, int64_t size, double alpha,
                    double beta, double k) {
  OpScope op("lrn_backward");
  LrnShape sh = lrn_shape(x, size, alpha, beta, k);
  check_matches(y, "y", DType::f32, x.shape, x, "x");
  check_matches(dy, "dy", DType::f32, x.shape, x, "x");
  Tensor dx = Tensor::empty_like(x);
  if (x.numel() > 0) CONVNET_DISPATCH(x.device(), lrn_backward, sh, x.data<float>(), dy.data<float>(), dx.data<float>());
  return dx;
}

// For the LRN layer (convnet/layers.py), which checks its settings when the net is built.
void lrn_check_settings(int64_t size, double alpha, double beta, double k) {
  OpScope op("lrn");
  lrn_settings(size, alpha, beta, k);
}

int lrn_variant() { return variant_switch().get(); }

void set_lrn_variant(int variant) { variant_switch().set(variant); }

void register_lrn(py::module_& m) {
  m.def("lrn", &lrn, py::arg("x"), py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"),
        CONVNET_NOGIL);
  m.def("lrn_backward", &lrn_backward, py::arg("x"), py::arg("y"), py::arg("dy"), py::arg("size"),
        py::arg("alpha"), py::arg("beta"), py::arg("k"), CONVNET_NOGIL);
  m.def("lrn_check_settings", &lrn_check_settings, py::arg("size"), py::arg("alpha"), py::arg("beta"), py::arg("k"));
  // Hidden: the CUDA LRN variant (CONVNET_LRN_VARIANT), so tests and benchmarks can run each.
  m.def("lrn_variant", &lrn_variant);
  m.def("set_lrn_variant", &set_lrn_variant, py::arg("variant"));
}

}  // namespace convnet
