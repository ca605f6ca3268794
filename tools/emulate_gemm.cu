// CPU emulation of the CUDA GEMM core (csrc/cuda/gemm.cuh) with the real conv/linear index maps
// (csrc/cuda/conv_gemm.cuh, linear_gemm.cuh): every thread of every block runs the kernel's own
// steps (GemmThread::init/fetch/stash/multiply/finish) in turn, barriers becoming loop boundaries,
// so the tiling, the double-buffered stages, the tile maps, split-K and the index math are checked
// against float64 direct convolution / matrix products without a GPU. Outputs start as NaN, so an
// element nobody writes fails. Host code only (no kernel is launched):
//   nvcc -std=c++17 -O2 -x cu tools/emulate_gemm.cu -o /tmp/emulate_gemm && /tmp/emulate_gemm
// Both GEMM variants (CONVNET_CONV_VARIANT, csrc/cuda/conv.cu) run: variant 1's split-K choice
// (choose_split_k_waves, emulated with 2 resident blocks per SM) and its stride-1 backward-data
// (flipped weights through the forward GEMM, checked for every shape where it applies), and its
// 48-row tile (Tile48) on every GEMM with a k-fast A operand.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "../csrc/cuda/conv_gemm.cuh"
#include "../csrc/cuda/linear_gemm.cuh"

namespace convnet {
const char* current_op() { return "emulate"; }
}  // namespace convnet

using namespace convnet;
using namespace convnet::cuda;

static int failures = 0;
static int variant = 0;  // the GEMM variant under test (see main)
static int split_runs[2] = {0, 0};  // GEMMs emulated with split-K, variant 0 / variants >= 1 (coverage)
static int multistage_runs[2] = {0, 0};  // variant 4: GEMMs emulated with copies landing early / late
static std::mt19937_64 rng(12345);

static std::vector<float> randn(size_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

template <class ST>
void reduce_partials(const GemmShape& g, const std::vector<float>& partial, const ST& st);

// Variant 4: gemm_kernel_multistage's steps, thread by thread, barriers as loop boundaries. Each
// thread has its own copy queue (gemm.cuh: HostCopyQueue); every other call lets copies land only
// at the wait covering them (a stage read before its copies landed stays NaN), the others at
// issue (a stage refilled while a thread still has to multiply it is overwritten too early).
template <class Cfg, class AL, class BL, class Thread, class ST>
void emulate_multistage(const GemmShape& g, const AL& a, const BL& b, std::vector<Thread>& threads, int64_t tiles_m,
                        int64_t tiles_n, float* partial, const ST& st) {
  constexpr int S = kGemmStages;
  static int calls = 0;
  const bool late = (calls++ % 2) == 0;
  ++multistage_runs[late];
  std::vector<HostCopyQueue> queues(Cfg::THREADS);
  auto sm = std::make_unique<GemmSmem<Cfg, S>>();
  auto as = [&](int t) -> Thread& {  // thread t's steps run with its own queue
    queues[t].late = late;
    host_copy_queue() = &queues[t];
    return threads[t];
  };
  for (int bz = 0; bz < g.batch * g.splits; ++bz)
    for (int by = 0; by < tiles_m; ++by)
      for (int bx = 0; bx < tiles_n; ++bx) {
        float* flat = &sm->As[0][0][0];
        for (size_t i = 0; i < sizeof(GemmSmem<Cfg, S>) / sizeof(float); ++i) flat[i] = NAN;
        for (int t = 0; t < Cfg::THREADS; ++t) threads[t].init(g, a, b, t, bx, by, bz);
        const int ntiles = threads[0].ntiles;
        for (auto& t : threads)
          if (t.ntiles != ntiles) { std::printf("FAIL: ntiles differs within a block\n"); ++failures; return; }
        for (int t = 0; t < Cfg::THREADS; ++t)
          for (int s = 0; s < S - 1; ++s) {
            if (s < ntiles) as(t).issue(*sm, a, b, s, s);
            gemm_copy_commit();
          }
        for (int kt = 0; kt < ntiles; ++kt) {
          for (int t = 0; t < Cfg::THREADS; ++t) {
            as(t);
            gemm_copy_wait<S - 2>();
          }
          // __syncthreads
          for (int t = 0; t < Cfg::THREADS; ++t) {
            const int next = kt + S - 1;
            if (next < ntiles) as(t).issue(*sm, a, b, next, next % S);
            gemm_copy_commit();
            as(t).multiply(*sm, kt % S);
          }
        }
        for (int t = 0; t < Cfg::THREADS; ++t) {
          as(t);
          gemm_copy_wait<0>();
          if (!queues[t].copies.empty() || !queues[t].group_ends.empty()) {
            std::printf("FAIL: copies left in flight\n");
            ++failures;
          }
          threads[t].finish(g, st, partial);
        }
      }
  host_copy_queue() = nullptr;
}

// The kernel's block loop, thread by thread (same skeleton as gemm_kernel), then the split-K
// reduction (same as gemm_reduce_kernel).
template <class Cfg, bool AK, bool BK, class AL, class BL, class ST>
void emulate(int64_t batch, int64_t M, int64_t N, int64_t K, const AL& a, const BL& b, const ST& st, int sms) {
  if (batch == 0 || M == 0 || N == 0) return;
  GemmShape g{(int)batch, (int)M, (int)N, (int)K, 1, 0};
  const int64_t tiles_m = (M + Cfg::BM - 1) / Cfg::BM, tiles_n = (N + Cfg::BN - 1) / Cfg::BN;
  if (variant >= 1)  // as launch_gemm, with 2 resident blocks per SM
    choose_split_k_waves(g, tiles_m * tiles_n * batch, Cfg::BM, Cfg::BN, Cfg::BK, 2 * (int64_t)sms);
  else
    choose_split_k(g, tiles_m * tiles_n * batch, Cfg::BK, sms);
  if (g.splits < 1 || (int64_t)g.splits * g.k_per_split < K || (g.splits - 1) * (int64_t)g.k_per_split >= (K > 0 ? K : 1) ||
      g.k_per_split % Cfg::BK) {
    std::printf("FAIL split-K choice: K=%ld splits=%d k_per_split=%d\n", (long)K, g.splits, g.k_per_split);
    ++failures;
  }
  if (g.splits > 1) ++split_runs[variant >= 1];
  std::vector<float> partial(g.splits > 1 ? (size_t)g.splits * batch * M * N : 0, NAN);
  using Thread = GemmThread<Cfg, AK, BK, AL, BL>;
  std::vector<Thread> threads(Cfg::THREADS);
  if constexpr (has_ptr<AL>::value && has_ptr<BL>::value) {
    if (variant >= 4) {
      emulate_multistage<Cfg>(g, a, b, threads, tiles_m, tiles_n, partial.data(), st);
      reduce_partials(g, partial, st);
      return;
    }
  }
  auto sm = std::make_unique<GemmSmem<Cfg>>();
  for (int bz = 0; bz < batch * g.splits; ++bz)
    for (int by = 0; by < tiles_m; ++by)
      for (int bx = 0; bx < tiles_n; ++bx) {
        float* flat = &sm->As[0][0][0];
        for (size_t i = 0; i < sizeof(GemmSmem<Cfg>) / sizeof(float); ++i) flat[i] = NAN;
        for (int t = 0; t < Cfg::THREADS; ++t) threads[t].init(g, a, b, t, bx, by, bz);
        const int ntiles = threads[0].ntiles;
        for (auto& t : threads)
          if (t.ntiles != ntiles) { std::printf("FAIL: ntiles differs within a block\n"); ++failures; return; }
        if (ntiles > 0)
          for (auto& t : threads) { t.fetch(a, b, 0); t.stash(*sm, 0); }
        // __syncthreads
        for (int kt = 0; kt < ntiles; ++kt) {
          const int stage = kt & 1;
          for (auto& t : threads) {
            if (kt + 1 < ntiles) t.fetch(a, b, kt + 1);
            t.multiply(*sm, stage);
            if (kt + 1 < ntiles) t.stash(*sm, stage ^ 1);
          }
          // __syncthreads
        }
        for (auto& t : threads) t.finish(g, st, partial.data());
      }
  reduce_partials(g, partial, st);
}

// As gemm_reduce_kernel.
template <class ST>
void reduce_partials(const GemmShape& g, const std::vector<float>& partial, const ST& st) {
  const int64_t batch = g.batch, M = g.M, N = g.N;
  if (g.splits > 1) {
    const int64_t per_split = batch * M * N, mn = M * N;
    for (int64_t idx = 0; idx < per_split; ++idx) {
      float s = 0.f;
      for (int sp = 0; sp < g.splits; ++sp) s += partial[sp * per_split + idx];
      int z = (int)(idx / mn);
      int64_t r = idx - z * mn;
      int m = (int)(r / N), n = (int)(r - (int64_t)m * N);
      st(z, m, n, s);
    }
  }
}

template <class G, class Cfg>
void emulate_gemm(const G& g, int sms) {
  emulate<Cfg, G::A_KFAST, G::B_KFAST>(g.batch, g.M, g.N, g.K, g.a, g.b, g.st, sms);
}

// A GEMM described as data (gemm.cuh: Gemm), emulated on the tile run_gemm picks under variant 2
// or later (choose_tile; the dense GEMMs of tools/emulate_winograd.cu and emulate_fft.cu).
template <class G>
void emulate_gemm_of(const G& g, int sms) {
  constexpr bool AK = G::A_KFAST, BK = G::B_KFAST;
  switch (choose_tile<AK, BK, typename G::Big>(g.M, g.N, 2)) {
    case TileChoice::Thin: return emulate<ThinTile, AK, BK>(g.batch, g.M, g.N, g.K, g.a, g.b, g.st, sms);
    case TileChoice::T48:
      if constexpr (tile48_fits<AK, BK>()) return emulate<Tile48, AK, BK>(g.batch, g.M, g.N, g.K, g.a, g.b, g.st, sms);
      break;
    case TileChoice::Big: return emulate<typename G::Big, AK, BK>(g.batch, g.M, g.N, g.K, g.a, g.b, g.st, sms);
    case TileChoice::Medium: return emulate<MediumTile, AK, BK>(g.batch, g.M, g.N, g.K, g.a, g.b, g.st, sms);
  }
}

// Errors of a transform-domain result (Winograd, FFT) against a float64 reference: norm-wise
// relative, and the worst element's error over its sum of |terms| plus the tensor's mean such sum
// (such an output mixes its tile's neighbours or every frequency, so an element with few terms,
// e.g. a dw tap that never touches the image and is exactly 0, is measured against that floor).
// Past either tolerance, or on a NaN (an element never written), prints what and counts a failure.
struct MixedErrors {
  double norm = 0, elem = 0;
};
inline MixedErrors check_mixed(const char* what, const std::vector<float>& got, const std::vector<double>& ref,
                               const std::vector<double>& mag, double norm_tol, double elem_tol) {
  double num = 0, den = 0, mean_mag = 0;
  MixedErrors e;
  bool nan = false;
  for (double m : mag) mean_mag += m / (double)mag.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i])) nan = true;
    const double d = got[i] - ref[i];
    num += d * d, den += ref[i] * ref[i];
    e.elem = std::fmax(e.elem, std::fabs(d) / (mag[i] + mean_mag + 1e-30));
  }
  e.norm = std::sqrt(num / (den + 1e-300));
  if (nan || !(e.norm <= norm_tol) || !(e.elem <= elem_tol)) {
    std::printf("FAIL %s: norm-wise rel err %.3g, worst element %.3g of its |terms|%s\n", what, e.norm, e.elem,
                nan ? " (NaN: element never written)" : "");
    ++failures;
  }
  return e;
}

// Compares against a float64 reference; tolerance scaled by the sum of |terms|.
static void compare(const char* what, const std::vector<float>& got, const std::vector<double>& want,
                    const std::vector<double>& mag) {
  double worst = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    double err = std::fabs(got[i] - want[i]) / (mag[i] + 1e-30);
    if (!(err <= 1e-5)) ++bad;  // NaN counts as bad
    if (err > worst || std::isnan(got[i])) worst = std::isnan(got[i]) ? INFINITY : err;
  }
  if (bad) {
    std::printf("FAIL %s: %zu of %zu wrong (worst rel %g)\n", what, bad, got.size(), worst);
    ++failures;
  }
}

template <class Cfg>
void check_conv(const ConvShape& s, int sms, const char* cfg) {
  const int64_t Cg = s.c / s.groups, Kg = s.k / s.groups;
  auto x = randn(s.n * s.c * s.h * s.w), w = randn(s.k * Cg * s.r * s.s), bias = randn(s.k);
  auto dy = randn(s.n * s.k * s.p * s.q);
  std::vector<double> y_ref(dy.size(), 0), y_mag(dy.size(), 0), dx_ref(x.size(), 0), dx_mag(x.size(), 0),
      dw_ref(w.size(), 0), dw_mag(w.size(), 0);
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t k = 0; k < s.k; ++k) {
      int64_t g = k / Kg;
      for (int64_t p = 0; p < s.p; ++p)
        for (int64_t q = 0; q < s.q; ++q) {
          int64_t yi = ((i * s.k + k) * s.p + p) * s.q + q;
          y_ref[yi] = bias[k];
          y_mag[yi] = std::fabs(bias[k]);
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t r = 0; r < s.r; ++r)
              for (int64_t t = 0; t < s.s; ++t) {
                int64_t h = p * s.stride_h - s.pad_h + r, ww = q * s.stride_w - s.pad_w + t;
                if (h < 0 || h >= s.h || ww < 0 || ww >= s.w) continue;
                int64_t xi = ((i * s.c + g * Cg + c) * s.h + h) * s.w + ww;
                int64_t wi = ((k * Cg + c) * s.r + r) * s.s + t;
                y_ref[yi] += (double)w[wi] * x[xi];
                y_mag[yi] += std::fabs((double)w[wi] * x[xi]);
                dx_ref[xi] += (double)w[wi] * dy[yi];
                dx_mag[xi] += std::fabs((double)w[wi] * dy[yi]);
                dw_ref[wi] += (double)x[xi] * dy[yi];
                dw_mag[wi] += std::fabs((double)x[xi] * dy[yi]);
              }
        }
    }
  std::vector<float> y(y_ref.size(), NAN), dx(x.size(), NAN), dw(w.size(), NAN);
  emulate_gemm<conv_gemm::Forward, Cfg>(conv_gemm::forward(s, x.data(), w.data(), bias.data(), y.data()), sms);
  emulate_gemm<conv_gemm::BackwardData, Cfg>(conv_gemm::backward_data(s, w.data(), dy.data(), dx.data()), sms);
  emulate_gemm<conv_gemm::BackwardFilter, Cfg>(conv_gemm::backward_filter(s, x.data(), dy.data(), dw.data()), sms);
  // The column path of backward-data (used on the GPU when Cg <= 16; checked here for every
  // shape), in chunks of images as conv.cu runs it, here 2 images a chunk to cover the chunking.
  std::vector<float> dx_cols(x.size(), NAN);
  constexpr bool columns_fit = tile_map_fits(Cfg::BM, Cfg::BK, Cfg::THREADS, conv_gemm::Columns::A_KFAST);
  if constexpr (columns_fit) {  // (Tile48 cannot run it; run_gemm never gives it one)
    const int64_t chunk = 2, chw = s.c * s.h * s.w;
    std::vector<float> cols((size_t)(s.c * s.r * s.s * chunk * s.p * s.q), NAN);
    for (int64_t img0 = 0; img0 < s.n; img0 += chunk) {
      const int64_t images = chunk < s.n - img0 ? chunk : s.n - img0;
      emulate_gemm<conv_gemm::Columns, Cfg>(
          conv_gemm::backward_data_columns(s, w.data(), dy.data(), img0, images, cols.data()), sms);
      auto f = conv_gemm::backward_data_col2im(s, cols.data(), images);
      for (int64_t i = 0; i < images; ++i)  // as col2im_kernel
        for (int e = 0; e < chw; ++e) {
          int ch = (int)(e / (s.h * s.w)), rest = (int)(e % (s.h * s.w));
          dx_cols[(img0 + i) * chw + e] = f((int)i, ch, rest / (int)s.w, rest % (int)s.w);
        }
    }
  }
  char what[300];
  auto name = [&](const char* op) {
    std::snprintf(what, sizeof what, "%s %s n=%ld c=%ld h=%ld w=%ld k=%ld r=%ld s=%ld stride=(%ld,%ld) pad=(%ld,%ld) g=%ld",
                  cfg, op, (long)s.n, (long)s.c, (long)s.h, (long)s.w, (long)s.k, (long)s.r, (long)s.s,
                  (long)s.stride_h, (long)s.stride_w, (long)s.pad_h, (long)s.pad_w, (long)s.groups);
    return what;
  };
  compare(name("forward"), y, y_ref, y_mag);
  compare(name("backward-data"), dx, dx_ref, dx_mag);
  compare(name("backward-filter"), dw, dw_ref, dw_mag);
  if (columns_fit) compare(name("backward-data via columns"), dx_cols, dx_ref, dx_mag);
  if (conv_gemm::backward_data_via_flip(s)) {  // variant 1, stride 1: as conv2d_backward_data runs it
    std::vector<float> wf(w.size(), NAN), dx_flip(x.size(), NAN);
    const conv_gemm::FlippedWeight f{w.data(), (int)Cg, (int)Kg, (int)s.r, (int)s.s};
    for (int e = 0; e < (int)wf.size(); ++e) wf[e] = f(e);  // as flip_weights_kernel
    emulate_gemm<conv_gemm::Forward, Cfg>(
        conv_gemm::forward(conv_gemm::flipped_shape(s), dy.data(), wf.data(), nullptr, dx_flip.data()), sms);
    compare(name("backward-data via flipped weights"), dx_flip, dx_ref, dx_mag);
  }
}

template <class Cfg>
void check_linear(int64_t n, int64_t in, int64_t out, int sms, const char* cfg) {
  using namespace linear_gemm;
  auto x = randn(n * in), w = randn(out * in), b = randn(out), dy = randn(n * out);
  std::vector<double> y_ref(n * out), y_mag(n * out), dx_ref(n * in, 0), dx_mag(n * in, 0), dw_ref(out * in, 0),
      dw_mag(out * in, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = b[o], m = std::fabs(b[o]);
      for (int64_t j = 0; j < in; ++j) {
        s += (double)x[i * in + j] * w[o * in + j];
        m += std::fabs((double)x[i * in + j] * w[o * in + j]);
        dx_ref[i * in + j] += (double)dy[i * out + o] * w[o * in + j];
        dx_mag[i * in + j] += std::fabs((double)dy[i * out + o] * w[o * in + j]);
        dw_ref[o * in + j] += (double)dy[i * out + o] * x[i * in + j];
        dw_mag[o * in + j] += std::fabs((double)dy[i * out + o] * x[i * in + j]);
      }
      y_ref[i * out + o] = s;
      y_mag[i * out + o] = m;
    }
  std::vector<float> y(n * out, NAN), dx(n * in, NAN), dw(out * in, NAN);
  // The same calls as csrc/cuda/linear.cu.
  emulate<Cfg, true, true>(1, n, out, in, AlongRows{x.data(), in}, AlongRows{w.data(), in},
                           RowMajorOutput{y.data(), out, b.data()}, sms);
  emulate<Cfg, true, false>(1, n, in, out, AlongRows{dy.data(), out}, AlongColumns{w.data(), in},
                            RowMajorOutput{dx.data(), in, nullptr}, sms);
  constexpr bool dw_fits = tile_map_fits(Cfg::BM, Cfg::BK, Cfg::THREADS, false);
  if constexpr (dw_fits)  // (Tile48 cannot run it; run_gemm never gives it one)
    emulate<Cfg, false, false>(1, out, in, n, AlongColumns{dy.data(), out}, AlongColumns{x.data(), in},
                               RowMajorOutput{dw.data(), in, nullptr}, sms);
  char what[200];
  std::snprintf(what, sizeof what, "%s linear n=%ld in=%ld out=%ld", cfg, (long)n, (long)in, (long)out);
  compare(what, y, y_ref, y_mag);
  compare(what, dx, dx_ref, dx_mag);
  if (dw_fits) compare(what, dw, dw_ref, dw_mag);
}

static void check_fastdiv() {
  std::uniform_int_distribution<int64_t> dd(1, INT32_MAX - 1), xx(0, INT32_MAX - 1);
  for (int t = 0; t < 200000; ++t) {
    int64_t d = t < 5000 ? t % 5000 + 1 : dd(rng) >> (t % 31);
    if (d < 1) d = 1;
    FastDiv f(d);
    int64_t xs[4] = {xx(rng), xx(rng) >> (t % 31), INT32_MAX - 1 - (t % 7), (int64_t)(t % 1000)};
    for (int64_t x : xs) {
      int q = f.div((int)x);
      if (q != x / d || f.mod((int)x, q) != x % d) {
        std::printf("FAIL FastDiv %ld / %ld: got %d\n", (long)x, (long)d, q);
        ++failures;
        return;
      }
    }
  }
}

// Both split-K rules over many sizes: every split non-empty, the splits cover K, k_per_split a
// multiple of BK, grid.z = batch * splits within CUDA's limit.
static void check_split_rules() {
  std::uniform_int_distribution<int64_t> e(0, 20);
  for (int t = 0; t < 20000; ++t) {
    const int64_t batch = 1 + (rng() % 3 == 0 ? rng() % 5000 : rng() % 4);
    const int64_t M = 1 + (int64_t)(rng() % 5000), N = 1 + (int64_t)(rng() % 5000);
    const int64_t K = t % 10 == 0 ? (int64_t)(rng() % 40) : (int64_t)((rng() % ((int64_t)1 << e(rng))) + 1);
    const int64_t blocks = ((M + 127) / 128) * ((N + 127) / 128) * batch;
    for (int v = 0; v < 2; ++v) {
      GemmShape g{(int)batch, (int)M, (int)N, (int)K, 1, 0};
      const int sms = 1 + (int)(rng() % 200);
      if (v) choose_split_k_waves(g, blocks, 128, 128, 8, sms * (1 + (int64_t)(rng() % 4)));
      else choose_split_k(g, blocks, 8, sms);
      const bool ok = g.splits >= 1 && g.k_per_split > 0 && g.k_per_split % 8 == 0 &&
                      (int64_t)g.splits * g.k_per_split >= K &&
                      (K == 0 ? g.splits == 1 : (int64_t)(g.splits - 1) * g.k_per_split < K) &&
                      batch * g.splits <= 65535;
      if (!ok) {
        std::printf("FAIL split rule %d: batch=%ld M=%ld N=%ld K=%ld -> splits=%d k_per_split=%d\n", v, (long)batch,
                    (long)M, (long)N, (long)K, g.splits, g.k_per_split);
        ++failures;
        return;
      }
    }
  }
}

static ConvShape shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t s, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, int64_t g) {
  ConvShape x{n, c, h, w, k, r, s, sh, sw, ph, pw, g, 0, 0};
  x.p = (h + 2 * ph - r) / sh + 1;
  x.q = (w + 2 * pw - s) / sw + 1;
  return x;
}

// A variant's eligible() against the expected answer for each shape (tools/emulate_winograd.cu,
// emulate_fft.cu).
struct EligibleCase {
  ConvShape s;
  bool want;
};
template <class F, size_t N>
void check_eligible(F eligible, const EligibleCase (&cases)[N]) {
  for (auto& c : cases)
    if (eligible(c.s) != c.want) {
      std::printf("FAIL eligible(n=%ld c=%ld h=%ld w=%ld k=%ld kernel %ldx%ld stride=%ld pad=(%ld,%ld) g=%ld) != %d\n",
                  (long)c.s.n, (long)c.s.c, (long)c.s.h, (long)c.s.w, (long)c.s.k, (long)c.s.r, (long)c.s.s,
                  (long)c.s.stride_h, (long)c.s.pad_h, (long)c.s.pad_w, (long)c.s.groups, c.want);
      ++failures;
    }
}

template <class Cfg>
void run_all(const char* cfg) {
  const int sms_list[2] = {1, 132};  // 1: no split-K; 132: split wherever the tiles are few
  for (int sms : sms_list) {
    check_conv<Cfg>(shape(2, 3, 13, 11, 5, 3, 3, 1, 1, 1, 1, 1), sms, cfg);
    check_conv<Cfg>(shape(1, 3, 23, 23, 6, 11, 11, 4, 4, 2, 2, 1), sms, cfg);     // conv1-like
    check_conv<Cfg>(shape(2, 4, 9, 10, 6, 5, 5, 1, 1, 2, 2, 2), sms, cfg);        // conv2-like, groups
    check_conv<Cfg>(shape(3, 6, 7, 7, 9, 3, 3, 2, 3, 1, 0, 3), sms, cfg);         // uneven strides
    check_conv<Cfg>(shape(2, 2, 4, 5, 3, 6, 7, 1, 2, 2, 3, 1), sms, cfg);         // kernel > input
    check_conv<Cfg>(shape(1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1), sms, cfg);         // all ones
    check_conv<Cfg>(shape(2, 3, 8, 8, 4, 2, 2, 3, 3, 0, 0, 1), sms, cfg);         // stride > kernel
    check_conv<Cfg>(shape(2, 5, 17, 16, 140, 1, 1, 1, 1, 0, 0, 1), sms, cfg);     // 1x1, M > 128
    check_conv<Cfg>(shape(3, 20, 14, 13, 18, 3, 3, 1, 1, 1, 1, 2), sms, cfg);     // long K for split
    check_linear<Cfg>(3, 7, 5, sms, cfg);
    check_linear<Cfg>(130, 300, 17, sms, cfg);
    check_linear<Cfg>(1, 1, 1, sms, cfg);
    check_linear<Cfg>(20, 513, 150, sms, cfg);
  }
  std::uniform_int_distribution<int> u(1, 6);
  for (int t = 0; t < 25; ++t) {
    int64_t g = u(rng) % 3 + 1, sh = u(rng) % 3 + 1, sw = u(rng) % 3 + 1;
    int64_t r = u(rng), s = u(rng), ph = u(rng) % 3, pw = u(rng) % 3;
    int64_t h = r + u(rng) * 2 - 2 * ph, w = s + u(rng) * 2 - 2 * pw;
    if (h < 1) h = 1 + u(rng);
    if (w < 1) w = 1 + u(rng);
    if (h + 2 * ph < r) ph = (r - h + 1) / 2;
    if (w + 2 * pw < s) pw = (s - w + 1) / 2;
    check_conv<Cfg>(shape(u(rng) % 3 + 1, g * u(rng), h, w, g * u(rng), r, s, sh, sw, ph, pw, g), t % 2 ? 132 : 7, cfg);
  }
}

#ifndef EMULATE_GEMM_NO_MAIN  // tools/emulate_winograd.cu and emulate_fft.cu include this file for emulate()
int main() {
  check_fastdiv();
  std::printf("FastDiv done (%d failures)\n", failures);
  check_split_rules();
  std::printf("split rules done (%d failures)\n", failures);
  for (variant = 0; variant <= 4; variant += variant == 1 ? 3 : 1) {  // 0, 1 (= 2, 3 here), 4
    std::printf("-- variant %d\n", variant);
    run_all<ThinTile>("thin");
    std::printf("thin done (%d failures)\n", failures);
    run_all<MediumTile>("medium");
    std::printf("medium done (%d failures)\n", failures);
    run_all<BigTile>("big");
    run_all<BigTileWide>("big-wide");
    // AlexNet conv1 and conv2 at full size (one image), as run_gemm would tile them.
    check_conv<BigTile>(shape(1, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1), 132, "big (conv1)");
    check_conv<MediumTile>(shape(1, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2), 132, "medium (conv2)");
    std::printf("big done (%d failures)\n", failures);
    if (variant >= 1) {  // the 48-row tile (variant 2 = variant 1's split rule + this tile)
      run_all<Tile48>("tile48");
      check_conv<Tile48>(shape(1, 3, 224, 224, 96, 11, 11, 4, 4, 2, 2, 1), 132, "tile48 (conv1)");
      check_conv<Tile48>(shape(1, 96, 27, 27, 256, 5, 5, 1, 1, 2, 2, 2), 132, "tile48 (conv2)");
      std::printf("tile48 done (%d failures)\n", failures);
    }
  }
  std::printf("split-K GEMMs emulated: variant 0 %d, variant 1 %d\n", split_runs[0], split_runs[1]);
  if (split_runs[1] == 0) { std::printf("FAIL: variant 1 never split\n"); ++failures; }
  std::printf("variant 4 multistage GEMMs emulated: copies landing at issue %d, at the wait %d\n",
              multistage_runs[0], multistage_runs[1]);
  if (!multistage_runs[0] || !multistage_runs[1]) { std::printf("FAIL: variant 4 not emulated\n"); ++failures; }
  std::printf(failures ? "FAILED: %d\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
#endif
