// Errors: every failure becomes a C++ exception that pybind11 turns into a Python
// exception. The message starts with the name of the op that was running, so a
// CUDA fault three layers deep still says which kernel it came from.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace convnet {

// Bad argument values and shapes -> Python ValueError (pybind11 maps std::invalid_argument).
struct ValueError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// Wrong dtype, wrong kind of object -> Python TypeError (registered in bindings.cpp).
struct TypeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Device problems (no GPU, CUDA errors, out of memory) -> Python RuntimeError.
struct DeviceError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The op running on this thread, set by OpScope at each entry point in csrc/ops.
const char* current_op();
struct OpScope {
  explicit OpScope(const char* name);
  ~OpScope();
  const char* previous;
};

namespace detail {
// Messages are built with std::string and std::to_string, not iostreams: formatting a
// number through an ostream needs the locale facets, which some toolchains (seen with a
// statically linked C++ runtime on a GPU machine) leave uninitialised inside a module.
inline void append_one(std::string& s, const std::string& v) { s += v; }
inline void append_one(std::string& s, const char* v) { s += v; }
inline void append_one(std::string& s, char v) { s += v; }
inline void append_one(std::string& s, bool v) { s += v ? "true" : "false"; }
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void append_one(std::string& s, T v) { s += std::to_string(v); }
// Floating point as %g: std::to_string's %f wrote 1e-50 as 0.000000 and 1e39 with 40 digits.
inline void append_one(std::string& s, double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  s += b;
}
template <class... A>
std::string message(const A&... parts) {
  std::string s = current_op();
  s += ": ";
  (append_one(s, parts), ...);
  return s;
}
}  // namespace detail

}  // namespace convnet

// CHECK_VALUE(cond, "parts", of, "the message") -> ValueError "op: the message"
#define CHECK_VALUE(cond, ...) \
  do { if (!(cond)) throw ::convnet::ValueError(::convnet::detail::message(__VA_ARGS__)); } while (0)
#define CHECK_TYPE(cond, ...) \
  do { if (!(cond)) throw ::convnet::TypeError(::convnet::detail::message(__VA_ARGS__)); } while (0)
#define CHECK_DEVICE(cond, ...) \
  do { if (!(cond)) throw ::convnet::DeviceError(::convnet::detail::message(__VA_ARGS__)); } while (0)
