// Errors: every failure becomes a C++ exception that pybind11 turns into a Python
// exception. The message starts with the name of the op that was running, so a
// CUDA fault three layers deep still says which kernel it came from.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

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
inline void append(std::ostringstream&) {}
template <class T, class... R>
void append(std::ostringstream& s, const T& v, const R&... rest) {
  s << v;
  append(s, rest...);
}
template <class... A>
std::string message(const A&... parts) {
  std::ostringstream s;
  s << current_op() << ": ";
  append(s, parts...);
  return s.str();
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
