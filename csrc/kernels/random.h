// Counter-based random numbers shared by the CPU and CUDA twins: the draw for element i
// is a pure function of (seed, i), so a dropout mask is the same on every device and for
// any number of threads or any launch configuration.
//
// The generator is SplitMix64 read at position i: key = mix64(seed), then
// bits(i) = mix64(key + i * golden_gamma). mix64 is SplitMix64's finaliser (a bijection of
// 64-bit words with good avalanche), so consecutive counters give unrelated outputs.
// tests/test_elementwise.py re-implements this in NumPy and asserts the exact mask.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define CONVNET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CONVNET_HOST_DEVICE inline
#endif

namespace convnet::random {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

CONVNET_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The per-call key; hoisted out of the element loop.
CONVNET_HOST_DEVICE uint64_t stream_key(uint64_t seed) { return mix64(seed); }

// 24 uniform bits for element i: an integer in [0, 2^24), i.e. u = bits * 2^-24 in [0, 1).
CONVNET_HOST_DEVICE uint32_t uniform24(uint64_t key, uint64_t i) {
  return (uint32_t)(mix64(key + i * kGoldenGamma) >> 40);
}

// Dropout keeps element i when uniform24 >= drop_threshold(p), i.e. when u >= p rounded up to
// the 2^-24 grid. Comparing integers (not floats) keeps CPU and GPU bit-identical.
inline uint32_t drop_threshold(double p) { return (uint32_t)std::ceil(p * 16777216.0); }
// The largest p anything survives: past it the threshold is 2^24 and every element is dropped,
// while the scale 1/(1 - p) stays finite (csrc/ops/elementwise.cpp refuses such p). Below it the
// kept fraction is 1 - p to within 2^-24.
constexpr double kMaxDropProbability = 1.0 - 1.0 / 16777216.0;

}  // namespace convnet::random
